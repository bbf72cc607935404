//! What this machine offers: CPU cores, memory and GPUs, read from the OS.

use orchion_proto::v1::Capacity;

/// The machine's capacity: logical CPUs, total memory (`/proc/meminfo`), and NVIDIA GPUs
/// (`/dev/nvidiaN` devices). What cannot be read counts as zero.
pub fn detect_capacity() -> Capacity {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get() as u64);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total_bytes(&text))
        .unwrap_or(0);
    let gpus = std::fs::read_dir("/dev")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| is_gpu_device(&e.file_name().to_string_lossy()))
                .count()
        })
        .unwrap_or(0);
    Capacity {
        cpu_millis: cpus * 1000,
        memory_bytes: memory,
        gpus: u32::try_from(gpus).unwrap_or(u32::MAX),
    }
}

fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn is_gpu_device(name: &str) -> bool {
    name.strip_prefix("nvidia")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_gpu_devices_are_read() {
        assert_eq!(
            mem_total_bytes("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000 * 1024)
        );
        assert_eq!(mem_total_bytes("nothing"), None);
        assert!(is_gpu_device("nvidia0") && is_gpu_device("nvidia12"));
        assert!(
            !is_gpu_device("nvidiactl") && !is_gpu_device("nvidia-uvm") && !is_gpu_device("nvidia")
        );
    }

    #[test]
    fn this_machine_has_some_cpu_and_memory() {
        let capacity = detect_capacity();
        assert!(capacity.cpu_millis >= 1000);
        assert!(capacity.memory_bytes > 0);
    }
}
