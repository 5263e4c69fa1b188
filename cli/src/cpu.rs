//! How much CPU a process has used, from Linux's /proc: fib-bench's CPU per call, for itself
//! and for a server process.

use std::time::Duration;

/// The kernel's unit of /proc's CPU times (USER_HZ), 100 on every Linux architecture.
const TICKS_PER_SECOND: u64 = 100;

/// User plus system CPU time of process `pid` (this process if `None`) so far; `None` where
/// /proc cannot tell (not Linux, a process that is gone).
pub fn used(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// utime + stime of a /proc/PID/stat line. The command name, second field, is in parentheses
/// and may hold spaces, so the fields are counted after its closing one.
fn parse_stat(stat: &str) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (user + system) * 1000 / TICKS_PER_SECOND,
    ))
}

/// Microseconds of CPU per call, from the CPU used over `calls` calls.
pub fn per_call(used: Duration, calls: u64) -> Option<f64> {
    (calls > 0).then(|| used.as_secs_f64() * 1e6 / calls as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_times_are_read_after_the_command_name() {
        let stat = "4242 (fib (bench) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 75 0 0 20 0 9";
        assert_eq!(parse_stat(stat), Some(Duration::from_millis(3250)));
        assert_eq!(parse_stat("garbage"), None);
        assert!(used(None).is_some(), "this process's own figures");
        assert_eq!(per_call(Duration::from_millis(40), 1000), Some(40.0));
        assert_eq!(per_call(Duration::from_millis(40), 0), None);
    }
}
