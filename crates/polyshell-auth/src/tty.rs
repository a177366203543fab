//! Silent line input on the controlling terminal, with the terminal restored afterwards
//! (also when the prompt is abandoned on Ctrl-C).

use secrecy::SecretString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};

pub(crate) struct Tty {
    file: File,
    saved: libc::termios,
}

/// Puts the terminal back as it was; usable from another thread than the reader's.
pub(crate) struct Restorer {
    fd: RawFd,
    saved: libc::termios,
    _keep: File,
}

impl Restorer {
    pub(crate) fn restore(&self) {
        // SAFETY: fd stays open (we hold a clone of the file); saved is a valid termios.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
        let _ = (&self._keep).write_all(b"\n");
    }
}

impl Tty {
    pub(crate) fn open() -> std::io::Result<Tty> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")?;
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(file.as_raw_fd(), &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Tty { file, saved })
    }

    pub(crate) fn restorer(&self) -> Restorer {
        let keep = self
            .file
            .try_clone()
            .unwrap_or_else(|_| std::fs::File::open("/dev/null").expect("/dev/null exists"));
        Restorer {
            fd: keep.as_raw_fd(),
            saved: self.saved,
            _keep: keep,
        }
    }

    /// Writes `prompt`, reads one line with echo off, restores the terminal.
    pub(crate) fn read_secret(mut self, prompt: &str) -> std::io::Result<SecretString> {
        let fd = self.file.as_raw_fd();
        let mut quiet = self.saved;
        // Echo off; line editing and Ctrl-C (ISIG) stay as they are.
        quiet.c_lflag &= !(libc::ECHO | libc::ECHONL);
        // SAFETY: valid fd and termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let result = (|| {
            self.file.write_all(prompt.as_bytes())?;
            self.file.flush()?;
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            loop {
                match self.file.read(&mut byte)? {
                    0 => break,
                    _ if byte[0] == b'\n' => break,
                    _ => line.push(byte[0]),
                }
            }
            let text = String::from_utf8(std::mem::take(&mut line)).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "the password is not UTF-8")
            })?;
            Ok(SecretString::from(text.trim_end_matches('\r').to_owned()))
        })();
        // SAFETY: as above.
        unsafe {
            libc::tcsetattr(fd, libc::TCSANOW, &self.saved);
        }
        let _ = self.file.write_all(b"\n");
        result
    }
}
