//! A server the bench runs as a child process: started from this bench binary in a `--serve…`
//! mode that prints `PORT <n>` once listening, measured through `/proc`, and stopped by
//! closing its stdin (which exercises the graceful-shutdown path). Shared by `read_path` and
//! `mirror`, with `parse_ms` for wrk's latency figures.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::procfs;

/// A running child server.
pub struct Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Server {
    /// Spawns `command` with piped stdin/stdout and waits for its `PORT <n>` line.
    pub fn spawn(mut command: Command) -> anyhow::Result<Server> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(Ok(port)) = line.trim().strip_prefix("PORT ").map(str::parse) else {
            let _ = child.kill();
            bail!("the child did not report its port: {line:?}");
        };
        Ok(Server { child, port })
    }

    /// Wraps a child started another way (its stdin piped), listening on `port`.
    #[allow(dead_code, reason = "the mirror bench starts only children of its own")]
    pub fn adopt(child: Child, port: u16) -> Server {
        Server { child, port }
    }

    /// `http://127.0.0.1:<port>`
    #[allow(dead_code, reason = "read_path builds its URLs from the port")]
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (CPU seconds used, peak RSS in MiB) so far.
    pub fn usage(&self) -> anyhow::Result<(f64, f64)> {
        let pid = self.child.id();
        let cpu = procfs::cpu_seconds(pid)?;
        let hwm_kb = procfs::Status::read(pid)?.kb("VmHWM:")?;
        Ok((cpu, hwm_kb as f64 / 1024.0))
    }

    /// Closes its stdin and waits up to `grace` for it to exit; kills it past that.
    pub fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        bail!("a child server did not stop within {grace:?} of its stdin closing")
    }
}

/// wrk latency (`812.00us`, `1.23ms`, `1.02s`) in ms.
pub fn parse_ms(s: &str) -> anyhow::Result<f64> {
    Ok(if let Some(v) = s.strip_suffix("us") {
        v.parse::<f64>()? / 1000.0
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse()?
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>()? * 1000.0
    } else {
        bail!("unknown latency unit in {s:?}")
    })
}
