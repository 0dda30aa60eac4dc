//! SIGINT, SIGTERM and SIGHUP (a closed terminal) as poll events, through a self-pipe: the handler writes one byte to a
//! socket pair whose other end the event loop watches, so a signal wakes an idle node at once
//! and the node shuts down from its loop rather than from inside the handler.

use std::io::{self, Read};
use std::os::unix::io::IntoRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicI32, Ordering};

use mio::net::UnixStream;
use mio::{Interest, Registry, Token};

/// Write end of the pipe, for the handler. -1 until installed.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_signal: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; a full pipe just drops the byte, which is
        // fine because one pending byte already wakes the loop.
        unsafe {
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

/// The read end, registered with the poll.
pub struct SignalPipe {
    reader: UnixStream,
}

impl SignalPipe {
    /// Creates the pipe, registers it, and routes SIGINT, SIGTERM and SIGHUP to it.
    ///
    /// # Errors
    /// If the socket pair or the handlers cannot be set up.
    pub fn install(registry: &Registry, token: Token) -> io::Result<SignalPipe> {
        let (reader, writer) = StdUnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let mut reader = UnixStream::from_std(reader);
        registry.register(&mut reader, token, Interest::READABLE)?;
        // The write end lives for the whole process: the handler may fire at any time.
        WAKE_FD.store(writer.into_raw_fd(), Ordering::Relaxed);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: installing a handler that only performs an async-signal-safe write.
            let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            if unsafe { libc::signal(signal, handler) } == libc::SIG_ERR {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(SignalPipe { reader })
    }

    /// Empties the pipe. Returns true when a signal arrived.
    pub fn drain(&mut self) -> bool {
        let mut buf = [0u8; 64];
        let mut got = false;
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return got,
                Ok(_) => got = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return got,
            }
        }
    }
}
