//! The node's side of the control socket: a Unix stream listener (mode 0600) and its
//! connections, read line by line and answered in order. The protocol itself lives in
//! `crate::control`; this file only moves bytes.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use super::RunError;
use crate::control::MAX_LINE;

/// Most control connections open at once; more are refused (closed at once).
const MAX_CONNECTIONS: usize = 64;
/// Most reply bytes queued for one slow reader before the connection is dropped.
const MAX_PENDING_OUTPUT: usize = 1 << 20;

struct Connection {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// The peer closed its side, or sent something unacceptable: close once output drains.
    closing: bool,
}

/// The listener and its connections.
pub struct ControlServer {
    path: PathBuf,
    listener: UnixListener,
    connections: HashMap<Token, Connection>,
    next_token: usize,
    first_token: usize,
}

impl ControlServer {
    /// Binds the control socket at `path`. A socket file left by a killed node (nobody accepts
    /// on it) is removed first; one held by a live node is an error.
    ///
    /// # Errors
    /// When a live node holds the path, or binding fails.
    pub fn bind(path: &Path, registry: &Registry, token: Token) -> Result<ControlServer, RunError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(RunError(format!(
                    "control socket path {} exists and is not a socket; refusing to replace it",
                    path.display()
                )));
            }
            if StdUnixStream::connect(path).is_ok() {
                return Err(RunError(format!(
                    "control socket {} is held by a running node; stop it first or pass \
                     another --control path",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(|e| {
                RunError(format!(
                    "removing stale control socket {}: {e}",
                    path.display()
                ))
            })?;
            log::info!("removed stale control socket {}", path.display());
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| RunError(format!("creating {}: {e}", dir.display())))?;
        }
        let mut listener = UnixListener::bind(path)
            .map_err(|e| RunError(format!("binding control socket {}: {e}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| RunError(format!("setting mode of {}: {e}", path.display())))?;
        registry
            .register(&mut listener, token, Interest::READABLE)
            .map_err(|e| RunError(format!("registering control socket: {e}")))?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            listener,
            connections: HashMap::new(),
            next_token: token.0 + 1,
            first_token: token.0 + 1,
        })
    }

    /// Accepts every waiting connection.
    pub fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("control socket accept failed: {e}");
                    return;
                }
            };
            if self.connections.len() >= MAX_CONNECTIONS {
                log::warn!("control socket: too many connections, refusing one");
                continue;
            }
            let token = Token(self.next_token);
            // Tokens only grow; at one per connection they do not run out.
            self.next_token += 1;
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = registry.register(&mut stream, token, interest) {
                log::warn!("control socket: cannot register connection: {e}");
                continue;
            }
            let connection = Connection {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                closing: false,
            };
            self.connections.insert(token, connection);
        }
    }

    /// Handles readiness on a connection and returns the complete lines it received. The
    /// caller answers each with `respond`, then calls `finish`, which closes the connection if
    /// the peer is done: a client that sends its line and shuts down its side at once (`echo
    /// status | socat ...`) still gets its answer.
    pub fn handle_event(&mut self, token: Token, readable: bool, writable: bool) -> Vec<String> {
        if token.0 < self.first_token {
            log::warn!("event for unknown token {token:?}");
            return Vec::new();
        }
        let Some(conn) = self.connections.get_mut(&token) else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        if readable {
            read_lines(conn, &mut lines);
        }
        if writable || !conn.output.is_empty() {
            flush(conn);
        }
        lines
    }

    /// Closes the connection once its peer is done and every answer is sent.
    pub fn finish(&mut self, registry: &Registry, token: Token) {
        self.maybe_close(registry, token);
    }

    /// Queues a reply on a connection and tries to send it at once.
    pub fn respond(&mut self, token: Token, reply: &str) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        conn.output.extend_from_slice(reply.as_bytes());
        if conn.output.len() > MAX_PENDING_OUTPUT {
            conn.output.clear();
            conn.closing = true;
        }
        flush(conn);
    }

    fn maybe_close(&mut self, registry: &Registry, token: Token) {
        let done = self
            .connections
            .get(&token)
            .is_some_and(|c| c.closing && c.output.is_empty());
        if done {
            let mut conn = self.connections.remove(&token).expect("connection");
            let _ = registry.deregister(&mut conn.stream);
        }
    }

    /// Removes the socket file at shutdown.
    pub fn remove_socket(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads what is available and splits off complete lines. An over-long line gets an error
/// reply and closes the connection.
fn read_lines(conn: &mut Connection, lines: &mut Vec<String>) {
    let mut buf = [0u8; 4096];
    loop {
        match conn.stream.read(&mut buf) {
            Ok(0) => {
                conn.closing = true;
                break;
            }
            Ok(n) => conn.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                conn.closing = true;
                conn.output.clear();
                return;
            }
        }
        if conn.input.len() > MAX_LINE * 16 {
            break;
        }
    }
    while let Some(pos) = conn.input.iter().position(|&b| b == b'\n') {
        if pos > MAX_LINE {
            break;
        }
        let raw: Vec<u8> = conn.input.drain(..=pos).collect();
        let line = String::from_utf8_lossy(&raw[..pos]).trim().to_string();
        if !line.is_empty() {
            lines.push(line);
        }
    }
    // At end of input, a last line without its newline still counts.
    if conn.closing && !conn.input.is_empty() && conn.input.len() <= MAX_LINE {
        let raw = std::mem::take(&mut conn.input);
        let line = String::from_utf8_lossy(&raw).trim().to_string();
        if !line.is_empty() {
            lines.push(line);
        }
    }
    if conn.input.len() > MAX_LINE {
        conn.input.clear();
        conn.output
            .extend_from_slice(format!("error: line longer than {MAX_LINE} bytes\n").as_bytes());
        conn.closing = true;
    }
}

fn flush(conn: &mut Connection) {
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(0) => {
                conn.output.clear();
                conn.closing = true;
            }
            Ok(n) => {
                conn.output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                conn.output.clear();
                conn.closing = true;
            }
        }
    }
}
