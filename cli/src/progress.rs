//! How fib-client shows the progress of a long call: a bar on stderr when it is a terminal,
//! JSON lines on stdout when asked, or nothing (and then it does not ask the server for any).

use fib_rpc::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// A bar per call on stderr, cleared when the call ends.
    Bar,
    /// A JSON line per progress message on stdout, before the call's own line.
    Json,
    /// Nowhere: progress is not asked for.
    Hidden,
}

impl Shown {
    /// A bar if stderr is a terminal; JSON lines with `--json --progress`; else nothing.
    pub fn choose(stderr_is_terminal: bool, json: bool, asked: bool) -> Shown {
        match (json && asked, stderr_is_terminal) {
            (true, _) => Shown::Json,
            (false, true) => Shown::Bar,
            (false, false) => Shown::Hidden,
        }
    }
}

/// What shows one call's progress, and clears it once the call has ended.
pub struct Reporter {
    bar: Arc<Mutex<Option<ProgressBar>>>,
}

impl Reporter {
    /// The callback for the call of `input`, and the reporter that ends its display; `None`
    /// when progress is [`Shown::Hidden`].
    pub fn start(
        shown: Shown,
        input: &str,
    ) -> Option<(Reporter, impl FnMut(&Progress) + Send + 'static)> {
        let bar = Arc::new(Mutex::new(None::<ProgressBar>));
        let (shared, input) = (Arc::clone(&bar), input.to_owned());
        let show = move |progress: &Progress| match shown {
            Shown::Json => {
                let mut line = json!({"input": input, "message": progress.message()});
                if let Some(fraction) = progress.fraction() {
                    line["progress"] = json!(fraction);
                }
                let mut stdout = std::io::stdout().lock();
                // A closed stdout ends the run when the call's own line fails to print.
                let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
            }
            _ => {
                let mut bar = shared
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let bar = bar.get_or_insert_with(|| new_bar(&input));
                if let Some(fraction) = progress.fraction() {
                    bar.set_position((fraction * 1000.0).round() as u64);
                }
                bar.set_message(progress.message().to_owned());
            }
        };
        (shown != Shown::Hidden).then(|| (Reporter { bar }, show))
    }

    /// The call has ended: its bar, if it had one, goes.
    pub fn finish(self) {
        let bar = self
            .bar
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
}

fn new_bar(input: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {percent:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(input.chars().take(20).collect::<String>());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_shown_where_someone_can_see_it() {
        assert_eq!(Shown::choose(true, false, false), Shown::Bar);
        assert_eq!(Shown::choose(false, false, false), Shown::Hidden);
        assert_eq!(Shown::choose(false, true, true), Shown::Json);
        assert_eq!(Shown::choose(true, true, true), Shown::Json);
        assert_eq!(Shown::choose(false, false, true), Shown::Hidden);
        assert!(Reporter::start(Shown::Hidden, "5").is_none());
    }
}
