//! The one stderr writer: notices, errors and log lines go through here so that none lands
//! inside the spinner line while `wait` shows one.
//!
//! While a spinner is registered, each write hides it, prints whole lines and draws it again
//! (indicatif's `suspend`). This module writes only stderr and decides nothing about what is
//! printed.

use std::io::Write as _;
use std::sync::Mutex;

use indicatif::ProgressBar;

/// The spinner on screen, if any.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Registers `bar` as the spinner on screen, or clears it with `None`.
pub fn set_active(bar: Option<ProgressBar>) {
    if let Ok(mut active) = ACTIVE.lock() {
        *active = bar;
    }
}

/// Writes `text` to stderr, above the spinner when one is on screen.
pub fn eprint(text: &str) {
    let bar = ACTIVE.lock().ok().and_then(|active| active.clone());
    let write = || {
        let mut stderr = std::io::stderr().lock();
        // Nothing useful can be done when stderr itself is gone.
        let _ = stderr.write_all(text.as_bytes());
        let _ = stderr.flush();
    };
    match bar {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// A stderr writer for `tracing_subscriber::fmt`: buffers one event and prints it whole
/// through [`eprint`] when dropped.
#[derive(Debug, Default)]
pub struct StderrWriter {
    buffer: Vec<u8>,
}

impl StderrWriter {
    /// A writer for one log event; pass `StderrWriter::new` as the `MakeWriter`.
    pub fn new() -> Self {
        StderrWriter::default()
    }
}

impl std::io::Write for StderrWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for StderrWriter {
    fn drop(&mut self) {
        if !self.buffer.is_empty() {
            eprint(&String::from_utf8_lossy(&self.buffer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_log_event_is_kept_whole_until_it_is_printed_above_the_spinner() {
        set_active(Some(ProgressBar::hidden()));
        let mut writer = StderrWriter::new();
        writer.write_all(b"WARN watch broken; ").unwrap();
        writer.write_all(b"retrying in 1s\n").unwrap();
        writer.flush().unwrap();
        assert_eq!(writer.buffer, b"WARN watch broken; retrying in 1s\n");
        // Printed once, whole, through the registered spinner's suspend.
        drop(writer);
        set_active(None);
        assert!(ACTIVE.lock().unwrap().is_none());
    }
}
