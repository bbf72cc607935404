//! Test support: faithful stand-ins for `terraform`, `helm`, `pulumi` and `kubectl` (with a
//! Crossplane claim's lifecycle), chosen by the name
//! this program is called by (tests put symlinks named after the tools first on `PATH`).
//!
//! Each checks its arguments as the real tool does (an unknown flag or subcommand is an error),
//! keeps state in its working directory, prints what the real tool prints on stdout (the JSON
//! the engines parse) and fails as it fails: a config holding `"//": "fail"` (Terraform's
//! comment key; a values or program key elsewhere) makes apply fail with the tool's error
//! format. Every call is appended to `$ORCHION_FAKE_LOG`, one line each.

use std::{io::Write, path::Path, process::ExitCode};

use serde_json::{Value, json};

fn main() -> ExitCode {
    let mut argv = std::env::args();
    let tool = argv
        .next()
        .as_deref()
        .and_then(|a| {
            Path::new(a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let args: Vec<String> = argv.collect();
    if let Some(log) = std::env::var_os("ORCHION_FAKE_LOG") {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            // One write per line: tools running at once (a parallel rollback) append whole
            // lines, never interleaved pieces.
            let line = format!("{tool} {}\n", args.join(" "));
            let _ = file.write_all(line.as_bytes());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match tool.as_str() {
        "terraform" => terraform(&args),
        "helm" => helm(&args),
        "pulumi" => pulumi(&args),
        "kubectl" => kubectl(&args),
        other => Err(format!(
            "orchion-fake-tool: called as `{other}`; link it as terraform, helm or pulumi"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// Accepts exactly `allowed` flags (and `positional` other arguments), as cobra/flag do.
fn check(args: &[&str], allowed: &[&str], positional: usize) -> Result<Vec<String>, String> {
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        // As cobra does: after `--`, every argument is positional, whatever it looks like.
        if arg == "--" {
            rest.extend(args[i + 1..].iter().map(|a| (*a).to_owned()));
            break;
        }
        if arg.starts_with('-') {
            let name = arg.split('=').next().unwrap_or(arg);
            if !allowed.contains(&name) {
                return Err(format!("Error: unknown flag: {name}"));
            }
            // Flags that take a value as the next argument.
            if !arg.contains('=')
                && matches!(
                    name,
                    "--namespace" | "--values" | "-o" | "--version" | "--stack" | "-f"
                )
            {
                i += 1;
            }
        } else {
            rest.push(arg.to_owned());
        }
        i += 1;
    }
    if rest.len() != positional {
        return Err(format!(
            "Error: accepts {positional} arg(s), received {}",
            rest.len()
        ));
    }
    Ok(rest)
}

fn flag_value<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == name)
        .and_then(|i| args.get(i + 1).copied())
}

fn read_json(path: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("Error: open {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("Error: {path}: {e}"))
}

fn fails(value: &Value) -> bool {
    value["//"] == "fail"
}

fn terraform(args: &[&str]) -> Result<(), String> {
    if std::env::var("TF_IN_AUTOMATION").as_deref() != Ok("1") {
        return Err("fake terraform: the engine must set TF_IN_AUTOMATION=1".into());
    }
    let (command, rest) = args
        .split_first()
        .ok_or("Usage: terraform [global options] <subcommand> [args]")?;
    match *command {
        "init" => {
            check(rest, &["-input", "-no-color"], 0)?;
            read_json("main.tf.json")?;
            std::fs::create_dir_all(".terraform").map_err(|e| e.to_string())?;
            println!("Terraform has been successfully initialized!");
            Ok(())
        }
        "plan" => {
            check(rest, &["-input", "-no-color", "-out"], 0)?;
            if !Path::new(".terraform").is_dir() {
                return Err(
                    "Error: Inconsistent dependency lock file\n\nRun \"terraform init\"".into(),
                );
            }
            let config = read_json("main.tf.json")?;
            std::fs::write("tfplan", config.to_string()).map_err(|e| e.to_string())?;
            println!("Plan: 1 to add, 0 to change, 0 to destroy.");
            Ok(())
        }
        "apply" => {
            let plan = check(rest, &["-input", "-no-color", "-json"], 1)?;
            if !rest.contains(&"-json") {
                return Err("fake terraform: the engine must ask for -json".into());
            }
            let config = read_json(&plan[0])
                .map_err(|_| format!("Error: Failed to load \"{}\" as a plan file", plan[0]))?;
            if fails(&config) {
                println!(
                    "{}",
                    json!({"@level": "error", "@message": "Error: creating resource: quota exceeded", "type": "diagnostic",
                    "diagnostic": {"severity": "error", "summary": "creating resource: quota exceeded"}})
                );
                return Err("Error: creating resource: quota exceeded".into());
            }
            let outputs: serde_json::Map<String, Value> = config["output"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, o)| {
                    (name.clone(), json!({"value": o["value"], "type": "string", "sensitive": o["sensitive"] == true}))
                })
                .collect();
            std::fs::write(
                "terraform.tfstate",
                json!({"version": 4, "outputs": outputs}).to_string(),
            )
            .map_err(|e| e.to_string())?;
            println!(
                "{}",
                json!({"@level": "info", "@message": "Apply complete! Resources: 1 added, 0 changed, 0 destroyed.", "type": "change_summary"})
            );
            Ok(())
        }
        "output" => {
            check(rest, &["-json", "-no-color"], 0)?;
            let state = read_json("terraform.tfstate").unwrap_or(json!({"outputs": {}}));
            println!("{}", state["outputs"]);
            Ok(())
        }
        "destroy" => {
            check(rest, &["-auto-approve", "-input", "-no-color"], 0)?;
            if !rest.contains(&"-auto-approve") {
                return Err("Error: destroy needs -auto-approve when input is disabled".into());
            }
            let _ = std::fs::remove_file("terraform.tfstate");
            println!("Destroy complete! Resources: 1 destroyed.");
            Ok(())
        }
        other => Err(format!("Terraform has no command named \"{other}\".")),
    }
}

fn helm(args: &[&str]) -> Result<(), String> {
    let (command, rest) = args.split_first().ok_or("Error: unknown command")?;
    match *command {
        "upgrade" => {
            let names = check(
                rest,
                &[
                    "--install",
                    "--namespace",
                    "--create-namespace",
                    "--values",
                    "--wait",
                    "-o",
                    "--version",
                ],
                2,
            )?;
            if !rest.contains(&"--install")
                || !rest.contains(&"--wait")
                || flag_value(rest, "-o") != Some("json")
            {
                return Err("fake helm: the engine must pass --install --wait -o json".into());
            }
            let namespace =
                flag_value(rest, "--namespace").ok_or("Error: --namespace is required here")?;
            let values = read_json(flag_value(rest, "--values").ok_or("Error: no values file")?)?;
            if fails(&values) {
                return Err(format!(
                    "Error: UPGRADE FAILED: release {} failed, and has been rolled back due to atomic being set: context deadline exceeded",
                    names[0]
                ));
            }
            std::fs::write(".fake-helm-release", &names[0]).map_err(|e| e.to_string())?;
            println!(
                "{}",
                json!({
                    "name": names[0], "namespace": namespace, "version": 1,
                    "info": {"status": "deployed", "description": "Install complete"},
                    "chart": {"metadata": {"name": names[1], "version": flag_value(rest, "--version")}},
                    "config": values,
                })
            );
            Ok(())
        }
        "uninstall" => {
            let names = check(rest, &["--namespace", "--wait"], 1)?;
            let installed = std::fs::read_to_string(".fake-helm-release").unwrap_or_default();
            if installed != names[0] {
                return Err(format!(
                    "Error: uninstall: Release not loaded: {}: release: not found",
                    names[0]
                ));
            }
            let _ = std::fs::remove_file(".fake-helm-release");
            println!("release \"{}\" uninstalled", names[0]);
            Ok(())
        }
        other => Err(format!("Error: unknown command \"{other}\" for \"helm\"")),
    }
}

fn pulumi(args: &[&str]) -> Result<(), String> {
    if !args.contains(&"--non-interactive") {
        return Err("fake pulumi: the engine must pass --non-interactive".into());
    }
    if std::env::var_os("PULUMI_BACKEND_URL").is_none() {
        return Err(
            "error: PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions"
                .into(),
        );
    }
    let program = read_json("Pulumi.yaml")?;
    match args {
        ["stack", "select", rest @ ..] => {
            check(rest, &["--create", "--non-interactive"], 1)?;
            Ok(())
        }
        ["preview", rest @ ..] => {
            check(rest, &["--stack", "--non-interactive"], 0)?;
            println!(
                "Previewing update ({})",
                flag_value(rest, "--stack").unwrap_or("")
            );
            Ok(())
        }
        ["up", rest @ ..] => {
            check(
                rest,
                &["--yes", "--json", "--stack", "--non-interactive"],
                0,
            )?;
            if fails(&program) {
                println!(
                    "{}",
                    json!({"diagnostics": [{"message": "error: update failed", "severity": "error"}]})
                );
                return Err("error: update failed".into());
            }
            std::fs::write(".fake-pulumi-outputs", program["outputs"].to_string())
                .map_err(|e| e.to_string())?;
            println!(
                "{}",
                json!({"result": "succeeded", "changeSummary": {"create": 1}})
            );
            Ok(())
        }
        ["stack", "output", rest @ ..] => {
            check(rest, &["--json", "--stack", "--non-interactive"], 0)?;
            let outputs =
                std::fs::read_to_string(".fake-pulumi-outputs").unwrap_or_else(|_| "{}".into());
            println!("{outputs}");
            Ok(())
        }
        ["destroy", rest @ ..] => {
            check(rest, &["--yes", "--stack", "--non-interactive"], 0)?;
            let _ = std::fs::remove_file(".fake-pulumi-outputs");
            println!("The resources in the stack have been deleted.");
            Ok(())
        }
        _ => Err(format!(
            "error: unknown command {:?} for \"pulumi\"",
            args.first()
        )),
    }
}

/// Where the fake cluster keeps a claim: `.fake-kube/<kind>.<namespace>.<name>.json` in the
/// working directory.
fn claim_path(claim: &Value) -> String {
    format!(
        ".fake-kube/{}.{}.{}.json",
        claim["kind"].as_str().unwrap_or(""),
        claim["metadata"]["namespace"].as_str().unwrap_or("default"),
        claim["metadata"]["name"].as_str().unwrap_or("")
    )
}

fn kubectl(args: &[&str]) -> Result<(), String> {
    let (command, rest) = args
        .split_first()
        .ok_or("error: You must specify the type of resource to get.")?;
    let file = flag_value(rest, "-f").ok_or("error: must specify one of -f and -k")?;
    let claim = read_json(file)?;
    for field in ["apiVersion", "kind"] {
        if !claim[field].is_string() {
            return Err(format!(
                "error: error validating \"{file}\": {field} not set"
            ));
        }
    }
    let path = claim_path(&claim);
    let kind = claim["kind"].as_str().unwrap_or("").to_lowercase();
    let name = claim["metadata"]["name"].as_str().unwrap_or("").to_owned();
    match *command {
        "apply" => {
            check(rest, &["--server-side", "--field-manager", "-f", "-o"], 0)?;
            if !rest.contains(&"--server-side") {
                return Err("fake kubectl: the engine must use server-side apply".into());
            }
            let failing = fails(&claim) || fails(&claim["spec"]);
            let mut stored = claim.clone();
            stored["status"] = if failing {
                json!({"conditions": [
                    {"type": "Synced", "status": "False", "reason": "ReconcileError", "message": "cannot create instance: quota exceeded"},
                    {"type": "Ready", "status": "False", "reason": "Creating"},
                ]})
            } else {
                json!({"endpoint": format!("{name}.{}.example.internal", claim["metadata"]["namespace"].as_str().unwrap_or("default")),
                       "conditions": [{"type": "Synced", "status": "True"}, {"type": "Ready", "status": "True"}]})
            };
            std::fs::create_dir_all(".fake-kube").map_err(|e| e.to_string())?;
            std::fs::write(&path, stored.to_string()).map_err(|e| e.to_string())?;
            println!("{stored}");
            Ok(())
        }
        "wait" => {
            check(rest, &["--for", "--timeout", "-f"], 0)?;
            let stored = read_json(&path).map_err(|_| {
                format!("Error from server (NotFound): {kind} \"{name}\" not found")
            })?;
            let ready = stored["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if !ready {
                return Err(format!(
                    "error: timed out waiting for the condition on {kind}/{name}"
                ));
            }
            println!("{kind}/{name} condition met");
            Ok(())
        }
        "get" => {
            check(rest, &["-f", "-o"], 0)?;
            let stored = read_json(&path).map_err(|_| {
                format!("Error from server (NotFound): {kind} \"{name}\" not found")
            })?;
            println!("{stored}");
            Ok(())
        }
        "delete" => {
            check(rest, &["-f", "--wait", "--ignore-not-found"], 0)?;
            if std::fs::remove_file(&path).is_err() && !rest.contains(&"--ignore-not-found=true") {
                return Err(format!(
                    "Error from server (NotFound): {kind} \"{name}\" not found"
                ));
            }
            println!("{kind} \"{name}\" deleted");
            Ok(())
        }
        other => Err(format!(
            "error: unknown command \"{other}\" for \"kubectl\""
        )),
    }
}
