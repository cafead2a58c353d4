//! What Linux's `/proc` says about a process: its CPU time. Used by the process
//! metrics (`switchyard_process_cpu_seconds_total`) and by the benches, which count
//! the CPU each path spends per unit of work.

use std::time::Duration;

/// User plus system time of `/proc/<pid>` (`pid` may be `self`); `None` where `/proc`
/// is missing or the process is gone. Resolution: one clock tick (10 ms).
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields start after its closing ')'. utime
    // and stime, fields 14 and 15 of stat(5), are the 12th and 13th after it.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    Some(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}
