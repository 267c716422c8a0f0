//! Who may talk to the HTTP server: `Host` and `Origin` validation against
//! DNS rebinding (the MCP specification requires it of local servers) and
//! the optional bearer token. Pure: the middleware in [`super`] feeds it the
//! headers and turns a [`Rejection`] into a response.

/// Why a request was refused; `Display` is the message the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("missing Host header")]
    MissingHost,
    #[error("Host {0:?} is not allowed (DNS-rebinding protection); allowed: {1}. Add yours with --allow-host")]
    Host(String, String),
    #[error("Origin {0:?} is not allowed (DNS-rebinding protection); allowed: the allowed hosts over http(s), or an --allow-origin")]
    Origin(String),
    #[error("missing bearer token: send 'Authorization: Bearer <token>'")]
    MissingToken,
    #[error("wrong bearer token")]
    WrongToken,
}

impl Rejection {
    /// 401 for authentication, 403 for everything else.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::MissingToken | Rejection::WrongToken => 401,
            _ => 403,
        }
    }
}

/// The rules, fixed at start.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Host names (no port), lowercase: `localhost`, `127.0.0.1`, `::1`, ...
    hosts: Vec<String>,
    /// Extra origins allowed verbatim (`https://app.example.com`).
    origins: Vec<String>,
    token: Option<String>,
}

/// The names a loopback server answers to.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The host name of an authority (`Host` header value or the part of an
/// origin after `scheme://`), without port and brackets, lowercase.
fn host_name(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if let Some(rest) = a.strip_prefix('[') {
        // [::1]:8080
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    if a.matches(':').count() > 1 {
        return a; // a bare IPv6 address
    }
    a.split(':').next().unwrap_or_default().to_string()
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Guard {
    /// `hosts` beyond the loopback names (the bind address when it is not
    /// loopback, `--allow-host` values); `origins` allowed verbatim.
    pub fn new(hosts: &[String], origins: &[String], token: Option<String>) -> Self {
        let mut all: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect();
        for h in hosts {
            let h = host_name(h);
            if !h.is_empty() && !all.contains(&h) {
                all.push(h);
            }
        }
        Guard {
            hosts: all,
            origins: origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            token,
        }
    }

    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    fn host_allowed(&self, authority: &str) -> bool {
        self.hosts.contains(&host_name(authority))
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.origins.contains(&o) {
            return true;
        }
        match o.split_once("://") {
            Some(("http" | "https", authority)) => self.host_allowed(authority),
            _ => false, // "null", file://, chrome-extension://, ...
        }
    }

    /// Checks one request's headers. `authenticate` is false for the few
    /// paths open without a token (`/healthz`).
    ///
    /// # Errors
    ///
    /// The first rule the request breaks.
    pub fn check(
        &self,
        host: Option<&str>,
        origin: Option<&str>,
        authorization: Option<&str>,
        authenticate: bool,
    ) -> Result<(), Rejection> {
        let host = host.ok_or(Rejection::MissingHost)?;
        if !self.host_allowed(host) {
            return Err(Rejection::Host(host.to_string(), self.hosts.join(", ")));
        }
        if let Some(origin) = origin {
            if !self.origin_allowed(origin) {
                return Err(Rejection::Origin(origin.to_string()));
            }
        }
        if let (Some(token), true) = (&self.token, authenticate) {
            let given = authorization
                .and_then(|a| {
                    a.strip_prefix("Bearer ")
                        .or_else(|| a.strip_prefix("bearer "))
                })
                .ok_or(Rejection::MissingToken)?;
            if !same(given.trim().as_bytes(), token.as_bytes()) {
                return Err(Rejection::WrongToken);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_pass_foreign_ones_do_not() {
        let g = Guard::new(&[], &[], None);
        for ok in ["localhost:8080", "127.0.0.1:1", "[::1]:9000", "LOCALHOST"] {
            assert_eq!(g.check(Some(ok), None, None, true), Ok(()), "{ok}");
        }
        let err = g.check(Some("evil.example.com:8080"), None, None, true);
        assert!(matches!(err, Err(Rejection::Host(h, _)) if h == "evil.example.com:8080"));
        assert_eq!(g.check(None, None, None, true), Err(Rejection::MissingHost));
        // A host that merely starts with an allowed name is not allowed.
        assert!(g
            .check(Some("localhost.evil.com"), None, None, true)
            .is_err());
    }

    #[test]
    fn origins_must_name_an_allowed_host() {
        let g = Guard::new(&[], &["https://app.example.com".into()], None);
        let h = Some("127.0.0.1:8080");
        assert_eq!(
            g.check(h, Some("http://127.0.0.1:8080"), None, true),
            Ok(())
        );
        assert_eq!(
            g.check(h, Some("http://localhost:3000"), None, true),
            Ok(())
        );
        assert_eq!(
            g.check(h, Some("https://app.example.com/"), None, true),
            Ok(())
        );
        for bad in [
            "http://evil.example.com",
            "null",
            "file://",
            "http://127.0.0.1.evil.com",
        ] {
            assert_eq!(
                g.check(h, Some(bad), None, true),
                Err(Rejection::Origin(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn token_is_required_where_it_applies() {
        let g = Guard::new(&["192.168.1.5".into()], &[], Some("s3cret".into()));
        let h = Some("192.168.1.5:8080");
        assert_eq!(g.check(h, None, None, true), Err(Rejection::MissingToken));
        assert_eq!(
            g.check(h, None, Some("Bearer nope"), true),
            Err(Rejection::WrongToken)
        );
        assert_eq!(
            g.check(h, None, Some("Basic s3cret"), true),
            Err(Rejection::MissingToken)
        );
        assert_eq!(g.check(h, None, Some("Bearer s3cret"), true), Ok(()));
        assert_eq!(g.check(h, None, None, false), Ok(()));
        assert_eq!(Rejection::WrongToken.status(), 401);
        assert_eq!(Rejection::Origin("x".into()).status(), 403);
    }
}
