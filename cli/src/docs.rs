//! Shell completions and man pages, generated from each tool's clap definition.

use clap::{Args, Command};
use clap_complete::Shell;

/// `--completions SHELL` and `--man`, flattened into every tool's arguments.
#[derive(Args, Debug, Clone)]
pub struct DocsArgs {
    /// Print a completion script for SHELL and exit (e.g. `fib-client --completions bash >
    /// ~/.local/share/bash-completion/completions/fib-client`).
    #[arg(long, value_name = "SHELL", exclusive = true)]
    pub completions: Option<Shell>,
    /// Print the man page (roff) and exit (e.g. `fib-client --man > ~/.local/share/man/man1/fib-client.1`).
    #[arg(long, exclusive = true)]
    pub man: bool,
}

impl DocsArgs {
    /// Writes what was asked for; `Some(exit code)` if the tool should exit now (after
    /// `--completions` or `--man`), `None` to go on.
    pub fn handle(&self, command: Command) -> Option<std::process::ExitCode> {
        let name = command.get_name().to_owned();
        match self.emit(command) {
            Ok(true) => Some(std::process::ExitCode::SUCCESS),
            Ok(false) => None,
            Err(error) => {
                eprintln!("{name}: {error}");
                Some(std::process::ExitCode::from(crate::exit::IO))
            }
        }
    }

    /// Writes what was asked for to stdout; true if the tool should exit now.
    pub fn emit(&self, mut command: Command) -> std::io::Result<bool> {
        let name = command.get_name().to_owned();
        let mut stdout = std::io::stdout();
        if let Some(shell) = self.completions {
            clap_complete::generate(shell, &mut command, name, &mut stdout);
            return Ok(true);
        }
        if self.man {
            return match clap_mangen::Man::new(command).render(&mut stdout) {
                // `--man | head` closed the pipe: that reader has what it wanted.
                Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error),
                _ => Ok(true),
            };
        }
        Ok(false)
    }
}
