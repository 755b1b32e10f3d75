//! What a worker uses: CPU time and resident memory.
//!
//! From the worker's cgroup when it has one (`cpu.stat`, `memory.stat`:
//! its whole tree, a launcher's app included), else from `/proc` for the
//! given processes (the worker and, under a launcher, its app).

use std::path::Path;
use std::time::Duration;

use nix::unistd::Pid;

/// One reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    /// CPU time used so far, user and system.
    pub(crate) cpu: Duration,
    /// Resident memory, in bytes.
    pub(crate) memory: u64,
}

/// Reads the usage of a worker: from `cgroup` if given, else the sum over
/// `pids`. None when nothing could be read (the worker is gone).
pub(crate) fn read(cgroup: Option<&Path>, pids: &[Pid]) -> Option<Usage> {
    if let Some(dir) = cgroup {
        if let Some(u) = from_cgroup(dir) {
            return Some(u);
        }
    }
    let mut total = Usage {
        cpu: Duration::ZERO,
        memory: 0,
    };
    let mut any = false;
    for &pid in pids {
        if let Some(u) = from_proc(pid) {
            total.cpu += u.cpu;
            total.memory += u.memory;
            any = true;
        }
    }
    any.then_some(total)
}

fn from_cgroup(dir: &Path) -> Option<Usage> {
    let memory = resident(&std::fs::read_to_string(dir.join("memory.stat")).ok()?)?;
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let usec: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))?
        .trim()
        .parse()
        .ok()?;
    Some(Usage {
        cpu: Duration::from_micros(usec),
        memory,
    })
}

/// What the cgroup's processes hold in memory, as their RSS counts it:
/// anonymous memory plus mapped files. Not `memory.current`, which also
/// counts the page cache of every file the tree read (node_modules), and
/// would make a memory limit replace workers that leak nothing.
fn resident(stat: &str) -> Option<u64> {
    let field = |name: &str| {
        stat.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some(field("anon")? + field("file_mapped").unwrap_or(0))
}

fn from_proc(pid: Pid) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and ')'):
    // state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = clock_ticks();
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(Usage {
        cpu: Duration::from_millis(ticks * 1000 / hz),
        memory: pages * page_size(),
    })
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |v| v.max(1) as u64)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |v| v.max(1) as u64)
}

/// Parses a memory size: `300M`, `1.5G`, `512K`, `1048576` (bytes).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], t[i..].to_ascii_uppercase()),
        None => (t, String::new()),
    };
    let factor: u64 = match unit.trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    let n: f64 = number.trim().parse().ok()?;
    (n.is_finite() && n > 0.0).then_some((n * factor as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_usage_is_read_from_proc() {
        let me = nix::unistd::getpid();
        let u = read(None, &[me]).expect("this process");
        assert!(u.memory > 1 << 20, "{u:?}");
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0);
        }
        let later = read(None, &[me]).unwrap();
        assert!(later.cpu >= u.cpu);
        assert!(read(None, &[Pid::from_raw(i32::MAX)]).is_none());
    }

    #[test]
    fn a_cgroups_memory_is_its_anonymous_and_mapped_memory_not_its_cache() {
        let stat =
            "anon 52428800\nfile 734003200\nkernel 1048576\nfile_mapped 10485760\nanon_thp 0\n";
        assert_eq!(resident(stat), Some(62914560));
        assert_eq!(resident("file 1\n"), None);
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("300M"), Some(300 << 20));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        for bad in ["", "M", "-1M", "3T", "lots"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
