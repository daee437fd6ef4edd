//! Listening sockets handed over by systemd socket activation (`LISTEN_FDS`; see
//! `sd_listen_fds(3)` and `systemd/mailveil.socket`).
//!
//! Each inherited socket is matched to a configured listener by its own address: a TCP
//! socket bound to `server.listen` serves the images, one bound to `api.listen` the rewrite
//! API, one bound to `milter.listen` (or a unix socket at its path) the milter. The socket
//! unit and the config therefore name the same addresses, and the order of `ListenStream=`
//! lines does not matter. A socket that matches nothing is an error at start-up, never
//! silently ignored: it would mean the two files disagree.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// A socket systemd passed that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// The descriptor's address could not be read.
    #[error("socket activation: descriptor {fd}: {error}")]
    Address {
        /// The descriptor number.
        fd: usize,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A unix socket with no path (abstract or unnamed) cannot be matched to the config.
    #[error("socket activation: descriptor {0} is a unix socket without a path")]
    NoPath(usize),
    /// Neither a TCP nor a unix stream socket.
    #[error("socket activation: descriptor {0} is not a TCP or unix stream socket")]
    NotAStreamSocket(usize),
    /// Sockets no configured listener claimed.
    #[error(
        "socket activation: {0} matches no listen address in the config \
         (server.listen, api.listen, milter.listen); make the socket unit and the config agree"
    )]
    Unclaimed(String),
}

/// The sockets systemd passed in, not yet claimed by a listener.
#[derive(Debug, Default)]
pub struct Activation {
    tcp: Vec<(SocketAddr, TcpListener)>,
    unix: Vec<(PathBuf, UnixListener)>,
}

impl Activation {
    /// Reads `LISTEN_FDS` / `LISTEN_PID`. Without them (not socket-activated) there are no
    /// sockets, and every listener binds its address itself.
    ///
    /// # Errors
    /// When an inherited descriptor is not a TCP or unix stream socket, or a unix socket
    /// has no path (abstract or unnamed sockets cannot be matched to the config).
    pub fn from_env() -> Result<Self, ActivationError> {
        let mut fds = listenfd::ListenFd::from_env();
        let mut found = Self::default();
        for index in 0..fds.len() {
            // The first passed descriptor is fd 3 (SD_LISTEN_FDS_START).
            let fd = index + 3;
            if let Ok(Some(listener)) = fds.take_tcp_listener(index) {
                let addr = listener
                    .local_addr()
                    .map_err(|error| ActivationError::Address { fd, error })?;
                found.tcp.push((addr, listener));
            } else if let Ok(Some(listener)) = fds.take_unix_listener(index) {
                let addr = listener
                    .local_addr()
                    .map_err(|error| ActivationError::Address { fd, error })?;
                let Some(path) = addr.as_pathname() else {
                    return Err(ActivationError::NoPath(fd));
                };
                found.unix.push((path.to_owned(), listener));
            } else {
                return Err(ActivationError::NotAStreamSocket(fd));
            }
        }
        Ok(found)
    }

    /// Whether systemd passed any socket.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.unix.is_empty()
    }

    /// Takes the inherited TCP socket bound to `addr`, ready for tokio (non-blocking).
    ///
    /// # Errors
    /// When the socket cannot be switched to non-blocking mode.
    pub fn take_tcp(&mut self, addr: SocketAddr) -> std::io::Result<Option<TcpListener>> {
        let Some(i) = self.tcp.iter().position(|(a, _)| *a == addr) else {
            return Ok(None);
        };
        let (_, listener) = self.tcp.swap_remove(i);
        listener.set_nonblocking(true)?;
        Ok(Some(listener))
    }

    /// Takes the inherited unix socket at `path`, ready for tokio (non-blocking).
    ///
    /// # Errors
    /// When the socket cannot be switched to non-blocking mode.
    pub fn take_unix(&mut self, path: &Path) -> std::io::Result<Option<UnixListener>> {
        let Some(i) = self.unix.iter().position(|(p, _)| p == path) else {
            return Ok(None);
        };
        let (_, listener) = self.unix.swap_remove(i);
        listener.set_nonblocking(true)?;
        Ok(Some(listener))
    }

    /// Fails when a socket is left that no listener claimed.
    ///
    /// # Errors
    /// Names every unclaimed socket.
    pub fn check_all_claimed(&self) -> Result<(), ActivationError> {
        let left: Vec<String> = self
            .tcp
            .iter()
            .map(|(a, _)| a.to_string())
            .chain(
                self.unix
                    .iter()
                    .map(|(p, _)| format!("unix:{}", p.display())),
            )
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        Err(ActivationError::Unclaimed(left.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_by_address_and_reports_the_rest() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut activation = Activation {
            tcp: vec![(addr_a, a), (addr_b, b)],
            unix: Vec::new(),
        };
        assert!(!activation.is_empty());
        let taken = activation.take_tcp(addr_b).unwrap().expect("b is there");
        assert_eq!(taken.local_addr().unwrap(), addr_b);
        assert!(
            activation.take_tcp(addr_b).unwrap().is_none(),
            "taken once only"
        );
        let err = activation.check_all_claimed().unwrap_err().to_string();
        assert!(err.contains(&addr_a.to_string()), "{err}");
        assert!(!err.contains(&addr_b.to_string()), "{err}");
        activation.take_tcp(addr_a).unwrap().unwrap();
        activation.check_all_claimed().unwrap();
        assert!(activation.is_empty());
    }

    #[test]
    fn not_activated_means_nothing_inherited() {
        // The test runner is not socket-activated.
        if std::env::var_os("LISTEN_FDS").is_none() {
            let activation = Activation::from_env().unwrap();
            assert!(activation.is_empty());
            activation.check_all_claimed().unwrap();
        }
    }
}
