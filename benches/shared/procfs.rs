//! A process's figures from Linux `/proc` (proc(5)), for the benches that measure a child
//! process (`read_path`, `faults`).

use anyhow::Context;

/// CPU seconds (utime + stime) used so far by `pid` (a number, or `self`).
pub fn cpu_seconds(pid: impl std::fmt::Display) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    // The fields after the parenthesised command name (which may hold spaces); utime and
    // stime are fields 14 and 15 of the line, in clock ticks (USER_HZ is 100 on Linux).
    let rest = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .with_context(|| format!("malformed {path}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<f64> {
        f.get(i)
            .with_context(|| format!("short {path}"))?
            .parse::<f64>()
            .with_context(|| format!("field {} of {path}", i + 3))
    };
    Ok((field(11)? + field(12)?) / 100.0)
}

/// The text of `/proc/<pid>/status`.
pub struct Status {
    path: String,
    text: String,
}

impl Status {
    pub fn read(pid: u32) -> anyhow::Result<Status> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
        Ok(Status { path, text })
    }

    /// A field counted in kB (`VmRSS:`, `VmHWM:`) or a plain count (`Threads:`).
    pub fn kb(&self, field: &str) -> anyhow::Result<u64> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .with_context(|| format!("no {field} in {}", self.path))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{field} in {}", self.path))
    }
}
