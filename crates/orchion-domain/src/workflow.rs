//! Workflow graphs: steps that need other steps, checked as a whole, and the templates that feed
//! one step's outputs into another's inputs.
//!
//! [`Dag::new`] reports every problem at once — duplicate names, unknown or self needs, each
//! cycle with its exact path (`a -> b -> c -> a`), templates that read a step that is not
//! upstream — each with a JSON pointer into the definition. A valid [`Dag`] gives the steps in
//! waves: every step of a wave needs only steps of earlier waves, so a wave runs in parallel.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::{FieldError, ValidationErrors};

/// The most steps one workflow may have.
pub const MAX_STEPS: usize = 10_000;

/// What a step declares about its place in the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepShape {
    pub name: String,
    pub needs: Vec<String>,
    /// Every template string in the step's spec, with the JSON pointer where it appears.
    pub templates: Vec<(String, String)>,
}

/// A reference a template makes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reference {
    /// `${{ input.a.b }}`: a path into the run's input.
    Input(Vec<String>),
    /// `${{ steps.build.outputs.image }}`: an output of an upstream step.
    StepOutput { step: String, path: Vec<String> },
    /// `${{ item }}` / `${{ item.x }}`: the element of a `for_each` fan-out.
    Item(Vec<String>),
    /// `${{ event.issue.number }}`: the payload of the webhook event a rule turns into a run.
    Event(Vec<String>),
}

/// A literal a comparison tests against.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    String(String),
    Number(f64),
    Bool(bool),
    Null,
}

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    /// `${{ steps.build.outputs.image }}`: the value referred to.
    Reference(Reference),
    /// `${{ steps.test.outputs.result == 'ok' }}` (or `!=`): true or false.
    Comparison {
        reference: Reference,
        equal: bool,
        literal: Literal,
    },
}

impl Piece {
    /// The reference this piece reads, if any.
    pub fn reference(&self) -> Option<&Reference> {
        match self {
            Piece::Text(_) => None,
            Piece::Reference(r) | Piece::Comparison { reference: r, .. } => Some(r),
        }
    }
}

/// Parses `text` into literal text and `${{ … }}` expressions: a reference, or a reference
/// compared with `==` or `!=` to a literal (`'text'`, `"text"`, a number, `true`, `false`,
/// `null`).
pub fn parse_template(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 3..];
        let end = after.find("}}").ok_or_else(|| {
            format!(
                "`${{{{` at offset {} is never closed with `}}}}`",
                text.len() - rest.len() + start
            )
        })?;
        pieces.push(parse_expression(after[..end].trim())?);
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

fn parse_expression(expression: &str) -> Result<Piece, String> {
    for (operator, equal) in [("==", true), ("!=", false)] {
        if let Some((left, right)) = expression.split_once(operator) {
            return Ok(Piece::Comparison {
                reference: parse_reference(left.trim())?,
                equal,
                literal: parse_literal(right.trim())?,
            });
        }
    }
    Ok(Piece::Reference(parse_reference(expression)?))
}

fn parse_literal(text: &str) -> Result<Literal, String> {
    let quoted = |q: char| {
        text.len() >= 2
            && text.starts_with(q)
            && text.ends_with(q)
            && !text[1..text.len() - 1].contains(q)
    };
    if quoted('\'') || quoted('"') {
        return Ok(Literal::String(text[1..text.len() - 1].to_owned()));
    }
    match text {
        "true" => Ok(Literal::Bool(true)),
        "false" => Ok(Literal::Bool(false)),
        "null" => Ok(Literal::Null),
        _ => text
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(Literal::Number)
            .ok_or_else(|| {
                format!("`{text}` is not a literal: use 'text', a number, true, false or null")
            }),
    }
}

fn parse_reference(expression: &str) -> Result<Reference, String> {
    let parts: Vec<&str> = expression.split('.').collect();
    let valid = |p: &&str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !parts.iter().all(valid) {
        return Err(format!(
            "`{expression}` is not a reference: use input.<path>, steps.<step>.outputs.<path> or item.<path>"
        ));
    }
    let rest = |from: usize| parts[from..].iter().map(|p| (*p).to_owned()).collect();
    match parts.as_slice() {
        ["input", ..] => Ok(Reference::Input(rest(1))),
        ["item", ..] => Ok(Reference::Item(rest(1))),
        ["event", ..] => Ok(Reference::Event(rest(1))),
        // A deployment's resources are its steps.
        ["steps" | "resources", step, "outputs", ..] => Ok(Reference::StepOutput {
            step: (*step).to_owned(),
            path: rest(3),
        }),
        _ => Err(format!(
            "`{expression}` is not a reference: use input.<path>, steps.<step>.outputs.<path> or item.<path>"
        )),
    }
}

/// A stored, versioned workflow definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowType {
    pub name: String,
    /// 1 for the first definition under a name; each different definition adds one.
    pub version: u32,
    pub project_id: Option<crate::ProjectId>,
    /// The definition as canonical JSON, validated when it was stored.
    pub definition: String,
    pub created_at: time::OffsetDateTime,
}

/// A checked workflow graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dag {
    names: Vec<String>,
    /// Each name's position in `names`.
    index: HashMap<String, usize>,
    needs: Vec<Vec<usize>>,
    /// The steps that need each one directly.
    dependents: Vec<Vec<usize>>,
    waves: Vec<Vec<usize>>,
    /// Each step's place in the waves, flattened: a step comes after every step it needs.
    rank: Vec<usize>,
}

impl Dag {
    /// Checks the steps as a whole and reports every problem.
    pub fn new(steps: &[StepShape]) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if steps.is_empty() {
            errors.push(FieldError::new(
                "steps",
                "a workflow needs at least one step",
            ));
        }
        if steps.len() > MAX_STEPS {
            errors.push(FieldError::new(
                "steps",
                format!("a workflow has at most {MAX_STEPS} steps"),
            ));
        }
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, step) in steps.iter().enumerate() {
            let ok = !step.name.is_empty()
                && step.name.len() <= 100
                && step
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                errors.push(FieldError {
                    pointer: format!("/steps/{i}/name"),
                    message: format!(
                        "step name `{}` is invalid: use 1 to 100 letters, digits, `_` or `-`",
                        step.name.escape_debug()
                    ),
                });
            }
            if let Some(first) = index.insert(&step.name, i) {
                index.insert(&step.name, first);
                errors.push(FieldError {
                    pointer: format!("/steps/{i}/name"),
                    message: format!("duplicate step name `{}` (also /steps/{first})", step.name),
                });
            }
        }
        let mut needs: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
        for (i, step) in steps.iter().enumerate() {
            for (k, need) in step.needs.iter().enumerate() {
                let pointer = format!("/steps/{i}/needs/{k}");
                match index.get(need.as_str()) {
                    None => errors.push(FieldError {
                        pointer,
                        message: format!(
                            "step `{}` needs `{need}`, which does not exist",
                            step.name
                        ),
                    }),
                    Some(&j) if j == i => errors.push(FieldError {
                        pointer,
                        message: format!("step `{}` needs itself", step.name),
                    }),
                    Some(&j) => {
                        if !needs[i].contains(&j) {
                            needs[i].push(j);
                        }
                    }
                }
            }
        }
        let (listed, more) = cycles(&needs, MAX_CYCLES_LISTED);
        for cycle in listed {
            let path: Vec<&str> = cycle.iter().map(|&i| steps[i].name.as_str()).collect();
            errors.push(FieldError {
                pointer: format!("/steps/{}/needs", cycle[0]),
                message: format!("cycle: {}", path.join(" -> ")),
            });
        }
        if more > 0 {
            errors.push(FieldError {
                pointer: "/steps".into(),
                message: format!(
                    "and {more} more cycles (the first {MAX_CYCLES_LISTED} are listed)"
                ),
            });
        }
        // Templates may read only the run input, the fan-out item, and outputs of upstream steps.
        if errors.0.is_empty() {
            for (i, step) in steps.iter().enumerate() {
                for (pointer, template) in &step.templates {
                    match parse_template(template) {
                        Err(message) => errors.push(FieldError {
                            pointer: pointer.clone(),
                            message: format!("template: {message}"),
                        }),
                        Ok(pieces) => {
                            for piece in pieces {
                                if let Some(Reference::StepOutput { step: from, .. }) =
                                    piece.reference()
                                {
                                    let ok = index
                                        .get(from.as_str())
                                        .is_some_and(|&j| is_upstream(&needs, j, i));
                                    if !ok {
                                        errors.push(FieldError {
                                            pointer: pointer.clone(),
                                            message: format!(
                                                "step `{}` reads outputs of `{from}`, which is not a step it needs (directly or through others)",
                                                step.name
                                            ),
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if !errors.0.is_empty() {
            return Err(errors);
        }
        let dependents = dependents_of(&needs);
        let waves = waves(&needs, &dependents);
        let mut rank = vec![0; needs.len()];
        for (r, &i) in waves.iter().flatten().enumerate() {
            rank[i] = r;
        }
        Ok(Dag {
            names: steps.iter().map(|s| s.name.clone()).collect(),
            index: index
                .into_iter()
                .map(|(name, i)| (name.to_owned(), i))
                .collect(),
            needs,
            dependents,
            waves,
            rank,
        })
    }

    /// The position of the step `name`, in definition order.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The positions of the steps the step at `i` needs directly.
    pub fn needs_at(&self, i: usize) -> &[usize] {
        &self.needs[i]
    }

    /// The positions of the steps that need the step at `i` directly.
    pub fn dependents_at(&self, i: usize) -> &[usize] {
        &self.dependents[i]
    }

    /// The step at `i`'s place in a topological order: after every step it needs.
    pub fn rank(&self, i: usize) -> usize {
        self.rank[i]
    }

    /// Every step's position, each after the steps it needs.
    pub fn order(&self) -> impl Iterator<Item = usize> + '_ {
        self.waves.iter().flatten().copied()
    }

    /// [`Dag::waves`] by position.
    pub fn wave_positions(&self) -> &[Vec<usize>] {
        &self.waves
    }

    /// Steps in waves: each wave needs only earlier waves.
    pub fn waves(&self) -> Vec<Vec<&str>> {
        self.waves
            .iter()
            .map(|wave| wave.iter().map(|&i| self.names[i].as_str()).collect())
            .collect()
    }

    /// The steps `name` needs directly.
    pub fn needs(&self, name: &str) -> Vec<&str> {
        self.position(name)
            .map(|i| {
                self.needs[i]
                    .iter()
                    .map(|&j| self.names[j].as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `names` and every step that depends on one of them, directly or not: what a retry of
    /// failed steps runs again, and what a failure skips.
    pub fn downstream_of(&self, names: &[&str]) -> BTreeSet<String> {
        let mut out: BTreeSet<usize> = names.iter().filter_map(|n| self.position(n)).collect();
        for wave in &self.waves {
            for &i in wave {
                if self.needs[i].iter().any(|j| out.contains(j)) {
                    out.insert(i);
                }
            }
        }
        out.into_iter().map(|i| self.names[i].clone()).collect()
    }
}

/// The most cycles one validation lists; the others are counted.
pub const MAX_CYCLES_LISTED: usize = 10;

/// Elementary cycles found by a depth-first search, one per edge that closes one, each rotated
/// to start at its lowest index and closed (`[a, b, c, a]`): the first `limit`, and how many
/// more there are. Iterative, so a long chain cannot exhaust the stack.
fn cycles(needs: &[Vec<usize>], limit: usize) -> (Vec<Vec<usize>>, usize) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; needs.len()];
    let mut found = BTreeSet::new();
    let mut more = 0;
    for root in 0..needs.len() {
        if marks[root] != Mark::New {
            continue;
        }
        marks[root] = Mark::OnPath;
        // The path from `root`, and for each node on it the next of its needs to follow.
        let mut path = vec![root];
        let mut next_need = vec![0usize];
        while let (Some(&node), Some(k)) = (path.last(), next_need.last_mut()) {
            let Some(&next) = needs[node].get(*k) else {
                marks[node] = Mark::Done;
                path.pop();
                next_need.pop();
                continue;
            };
            *k += 1;
            match marks[next] {
                Mark::New => {
                    marks[next] = Mark::OnPath;
                    path.push(next);
                    next_need.push(0);
                }
                Mark::OnPath if found.len() < limit => {
                    let start = path.iter().position(|&n| n == next).unwrap_or(0);
                    let mut cycle: Vec<usize> = path[start..].to_vec();
                    let lowest = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, n)| **n)
                        .map_or(0, |(i, _)| i);
                    cycle.rotate_left(lowest);
                    cycle.push(cycle[0]);
                    found.insert(cycle);
                }
                Mark::OnPath => more += 1,
                Mark::Done => {}
            }
        }
    }
    (found.into_iter().collect(), more)
}

/// Kahn's algorithm, level by level. Call only on an acyclic graph.
fn waves(needs: &[Vec<usize>], dependents: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut remaining: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut wave: Vec<usize> = (0..needs.len()).filter(|&i| remaining[i] == 0).collect();
    let mut waves = Vec::new();
    while !wave.is_empty() {
        let mut next = Vec::new();
        for &i in &wave {
            for &d in &dependents[i] {
                remaining[d] -= 1;
                if remaining[d] == 0 {
                    next.push(d);
                }
            }
        }
        next.sort_unstable();
        waves.push(std::mem::replace(&mut wave, next));
    }
    waves
}

/// For each step, the steps that need it directly.
fn dependents_of(needs: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); needs.len()];
    for (i, ns) in needs.iter().enumerate() {
        for &j in ns {
            dependents[j].push(i);
        }
    }
    dependents
}

/// Whether `from` is upstream of `step`: `step` needs it, directly or through others. A walk up
/// from `step` (no step's every ancestor is kept: a long chain would make that quadratic).
fn is_upstream(needs: &[Vec<usize>], from: usize, step: usize) -> bool {
    let mut seen = HashSet::new();
    let mut stack = needs[step].clone();
    while let Some(i) = stack.pop() {
        if i == from {
            return true;
        }
        if seen.insert(i) {
            stack.extend(&needs[i]);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn step(name: &str, needs: &[&str]) -> StepShape {
        StepShape {
            name: name.into(),
            needs: needs.iter().map(|n| (*n).to_owned()).collect(),
            templates: Vec::new(),
        }
    }

    fn messages(err: &ValidationErrors) -> Vec<(String, String)> {
        err.0
            .iter()
            .map(|e| (e.pointer.clone(), e.message.clone()))
            .collect()
    }

    #[test]
    fn a_diamond_runs_in_three_waves() {
        let dag = Dag::new(&[
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a"]),
            step("d", &["b", "c"]),
        ])
        .unwrap();
        assert_eq!(dag.waves(), vec![vec!["a"], vec!["b", "c"], vec!["d"]]);
        assert_eq!(dag.needs("d"), ["b", "c"]);
        let again: Vec<String> = dag.downstream_of(&["b"]).into_iter().collect();
        assert_eq!(again, ["b", "d"]);
    }

    #[test]
    fn every_problem_is_reported_with_the_exact_cycle() {
        let err = Dag::new(&[
            step("a", &["c"]),
            step("b", &["a"]),
            step("c", &["b"]),
            step("a", &[]),
            step("d", &["zz", "d"]),
        ])
        .unwrap_err();
        let found = messages(&err);
        assert!(
            found.contains(&(
                "/steps/3/name".into(),
                "duplicate step name `a` (also /steps/0)".into()
            )),
            "{found:?}"
        );
        assert!(found.contains(&(
            "/steps/4/needs/0".into(),
            "step `d` needs `zz`, which does not exist".into()
        )));
        assert!(found.contains(&("/steps/4/needs/1".into(), "step `d` needs itself".into())));
        assert!(
            found.contains(&("/steps/0/needs".into(), "cycle: a -> c -> b -> a".into())),
            "{found:?}"
        );
    }

    #[test]
    fn templates_read_only_upstream_steps() {
        let mut deploy = step("deploy", &["build"]);
        deploy.templates = vec![
            (
                "/steps/2/spec/args/0".into(),
                "${{ steps.build.outputs.image }}".into(),
            ),
            (
                "/steps/2/spec/args/1".into(),
                "${{ steps.lint.outputs.report }}".into(),
            ),
            (
                "/steps/2/spec/args/2".into(),
                "${{ input.env }}-${{ item }}".into(),
            ),
            ("/steps/2/spec/args/3".into(), "${{ nonsense }}".into()),
            ("/steps/2/spec/args/4".into(), "${{ input.x".into()),
        ];
        let err = Dag::new(&[
            step("build", &["fetch"]),
            step("lint", &["fetch"]),
            deploy,
            step("fetch", &[]),
        ])
        .unwrap_err();
        let pointers: Vec<&str> = err.0.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/steps/2/spec/args/1",
                "/steps/2/spec/args/3",
                "/steps/2/spec/args/4"
            ]
        );
        assert!(err.0[0].message.contains("`lint`"));
    }

    #[test]
    fn templates_parse_into_text_and_references() {
        assert_eq!(
            parse_template("img=${{ steps.build.outputs.image }}:latest").unwrap(),
            vec![
                Piece::Text("img=".into()),
                Piece::Reference(Reference::StepOutput {
                    step: "build".into(),
                    path: vec!["image".into()]
                }),
                Piece::Text(":latest".into()),
            ]
        );
        assert_eq!(
            parse_template("plain").unwrap(),
            vec![Piece::Text("plain".into())]
        );
        assert!(parse_template("${{ steps.build }}").is_err());
    }

    #[test]
    fn comparisons_parse_with_their_literals() {
        let reference = Reference::StepOutput {
            step: "test".into(),
            path: vec!["result".into()],
        };
        let cases = [
            ("'ok'", true, Literal::String("ok".into())),
            ("\"a b\"", true, Literal::String("a b".into())),
            ("3", false, Literal::Number(3.0)),
            ("true", true, Literal::Bool(true)),
            ("null", false, Literal::Null),
        ];
        for (literal, equal, expected) in cases {
            let op = if equal { "==" } else { "!=" };
            let text = format!("${{{{ steps.test.outputs.result {op} {literal} }}}}");
            assert_eq!(
                parse_template(&text).unwrap(),
                vec![Piece::Comparison {
                    reference: reference.clone(),
                    equal,
                    literal: expected
                }],
                "{text}"
            );
        }
        let bad = parse_template("${{ input.x == ok }}").unwrap_err();
        assert!(bad.contains("`ok` is not a literal"), "{bad}");
        assert!(parse_template("${{ input.x == 'a'b' }}").is_err());
    }

    #[test]
    fn the_longest_closed_chain_is_found_without_exhausting_a_small_stack() {
        let len = MAX_STEPS;
        let steps: Vec<StepShape> = (0..len)
            .map(|i| StepShape {
                name: format!("s{i}"),
                needs: vec![format!("s{}", (i + len - 1) % len)],
                templates: vec![],
            })
            .collect();
        // A thread with a 256 KiB stack: a recursive search 10,000 steps deep would overflow.
        let found = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || Dag::new(&steps).unwrap_err())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(found.0.len(), 1);
        assert!(
            found.0[0]
                .message
                .starts_with("cycle: s0 -> s9999 -> s9998")
        );
    }

    proptest! {
        /// Graphs whose needs point only backwards are acyclic: they validate, every step lands
        /// in exactly one wave, and every need is in an earlier wave.
        #[test]
        fn backward_graphs_are_valid_and_waves_respect_needs(
            edges in prop::collection::vec(prop::collection::vec(any::<prop::sample::Index>(), 0..4), 1..40)
        ) {
            let steps: Vec<StepShape> = edges.iter().enumerate().map(|(i, picks)| {
                let needs: Vec<String> = if i == 0 { vec![] } else {
                    picks.iter().map(|p| format!("s{}", p.index(i))).collect()
                };
                StepShape { name: format!("s{i}"), needs, templates: vec![] }
            }).collect();
            let dag = Dag::new(&steps).unwrap();
            let waves = dag.waves();
            let position: BTreeMap<&str, usize> = waves.iter().enumerate()
                .flat_map(|(w, names)| names.iter().map(move |n| (*n, w))).collect();
            prop_assert_eq!(position.len(), steps.len());
            for s in &steps {
                for n in &s.needs {
                    prop_assert!(position[n.as_str()] < position[s.name.as_str()]);
                }
            }
        }

        /// Adding one edge from the first step to the last of a chain always closes a cycle
        /// through every step, reported as one path.
        #[test]
        fn a_closed_chain_is_one_reported_cycle(len in 2usize..30) {
            let steps: Vec<StepShape> = (0..len).map(|i| {
                let need = if i == 0 { format!("s{}", len - 1) } else { format!("s{}", i - 1) };
                StepShape { name: format!("s{i}"), needs: vec![need], templates: vec![] }
            }).collect();
            let err = Dag::new(&steps).unwrap_err();
            prop_assert_eq!(err.0.len(), 1);
            let expected: Vec<String> = std::iter::once(0).chain((1..len).rev()).chain(std::iter::once(0)).map(|i| format!("s{i}")).collect();
            prop_assert_eq!(&err.0[0].message, &format!("cycle: {}", expected.join(" -> ")));
        }
    }
}
