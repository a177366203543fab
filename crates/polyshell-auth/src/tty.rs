//! Silent line input on the controlling terminal, with the terminal restored afterwards
//! (also when the prompt is abandoned on Ctrl-C, from the aborting side: see ARCHITECTURE.md
//! for why this is not `rpassword`). Terminal modes through `rustix`'s safe termios calls.

use rustix::termios::{self, LocalModes, OptionalActions, Termios};
use secrecy::zeroize::Zeroizing;
use secrecy::SecretString;
use std::fs::File;
use std::io::{Read, Write};

pub(crate) struct Tty {
    file: File,
    saved: Termios,
}

/// Puts the terminal back as it was; usable from another thread than the reader's.
pub(crate) struct Restorer {
    file: Option<File>,
    saved: Termios,
}

impl Restorer {
    pub(crate) fn restore(&self) {
        if let Some(file) = &self.file {
            let _ = termios::tcsetattr(file, OptionalActions::Now, &self.saved);
            let _ = (&*file).write_all(b"\n");
        }
    }
}

impl Tty {
    pub(crate) fn open() -> std::io::Result<Tty> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")?;
        let saved = termios::tcgetattr(&file)?;
        Ok(Tty { file, saved })
    }

    pub(crate) fn restorer(&self) -> Restorer {
        Restorer {
            // A clone of the descriptor keeps the terminal open for the restorer (no clone:
            // nothing to restore through).
            file: self.file.try_clone().ok(),
            saved: self.saved.clone(),
        }
    }

    /// Writes `prompt`, reads one line with echo off, restores the terminal.
    pub(crate) fn read_secret(mut self, prompt: &str) -> std::io::Result<SecretString> {
        let mut quiet = self.saved.clone();
        // Echo off; line editing and Ctrl-C (ISIG) stay as they are.
        quiet.local_modes &= !(LocalModes::ECHO | LocalModes::ECHONL);
        termios::tcsetattr(&self.file, OptionalActions::Now, &quiet)?;
        let result = (|| {
            self.file.write_all(prompt.as_bytes())?;
            self.file.flush()?;
            // Every copy of the answer is zeroed when dropped.
            let mut line = Zeroizing::new(Vec::new());
            let mut byte = [0u8; 1];
            loop {
                match self.file.read(&mut byte)? {
                    0 => break,
                    _ if byte[0] == b'\n' => break,
                    _ => line.push(byte[0]),
                }
            }
            let text = std::str::from_utf8(&line).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "the password is not UTF-8")
            })?;
            Ok(SecretString::from(text.trim_end_matches('\r').to_owned()))
        })();
        let _ = termios::tcsetattr(&self.file, OptionalActions::Now, &self.saved);
        let _ = self.file.write_all(b"\n");
        result
    }
}
