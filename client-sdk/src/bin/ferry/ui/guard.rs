//! Who may talk to the local web app: the browser that opened the URL `ferry ui` printed, and
//! nothing else on the machine or on the web.
//!
//! - The token (32 random bytes) is exchanged once for an HttpOnly, SameSite=Strict cookie
//!   named after the port (two `ferry ui` on one machine do not overwrite each other's).
//! - `Host` must name the loopback address and our port: a DNS-rebinding page reaches us
//!   under its own host name.
//! - A request that changes something must come from our own origin: a form or a `fetch` of
//!   another page carries its origin (and no cookie, being cross-site).
//! - Every response carries a strict Content-Security-Policy: only our own embedded scripts
//!   and styles run.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use subtle::ConstantTimeEq;

use super::http::{Reply, html, problem};

/// The policy of every page and answer: our own scripts and styles only, no frames, no
/// plugins, no form posts elsewhere. `blob:`/`data:` images are previews made by the page;
/// `mediastream:` is a call's camera.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; \
     connect-src 'self'; font-src 'none'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

/// The checks of one `ferry ui` server.
#[derive(Debug)]
pub struct Guard {
    port: u16,
    token: String,
    cookie: String,
}

impl Guard {
    pub fn new(port: u16, token: String) -> Self {
        Self {
            port,
            cookie: format!("ferry-ui-{port}"),
            token,
        }
    }

    /// The address to open: the only place the token appears.
    pub fn login_url(&self) -> String {
        format!("http://127.0.0.1:{}/?token={}", self.port, self.token)
    }

    /// `Err` with the answer when the request must not go further.
    pub fn check<B>(&self, request: &Request<B>) -> Result<(), Box<Reply>> {
        self.check_host_and_origin(request)?;
        if !self.has_cookie(request.headers()) {
            return Err(Box::new(if request.uri().path().starts_with("/api/") {
                problem(
                    StatusCode::UNAUTHORIZED,
                    "no_token",
                    "Open the link `ferry ui` printed: this browser has not been let in.",
                )
            } else {
                html(StatusCode::UNAUTHORIZED, LOCKED_PAGE)
            }));
        }
        Ok(())
    }

    /// The checks a login must pass too (it has no cookie yet): our host, and our origin
    /// when there is one (always, for a change).
    pub fn check_host_and_origin<B>(&self, request: &Request<B>) -> Result<(), Box<Reply>> {
        if !self.host_is_ours(request.headers()) {
            // 421: "this server does not serve that name", what a rebinding page gets.
            return Err(Box::new(problem(
                StatusCode::MISDIRECTED_REQUEST,
                "wrong_host",
                "This address is not the Ferry app's: open the link `ferry ui` printed.",
            )));
        }
        let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
        match request.headers().get(header::ORIGIN) {
            Some(origin) if !self.origin_is_ours(origin) => {
                return Err(Box::new(problem(
                    StatusCode::FORBIDDEN,
                    "wrong_origin",
                    "Another web page tried to use the Ferry app; refused.",
                )));
            }
            None if changes => {
                return Err(Box::new(problem(
                    StatusCode::FORBIDDEN,
                    "wrong_origin",
                    "A change must come from the Ferry app's own page.",
                )));
            }
            _ => {}
        }
        Ok(())
    }

    /// `GET /?token=T`: with the right token, the cookie and a page that moves on to `/`
    /// (a same-origin navigation, so the SameSite=Strict cookie goes with it even when the
    /// link was opened from elsewhere); with a wrong one, 401 and no cookie.
    pub fn login(&self, token: &str) -> Reply {
        if !bool::from(token.as_bytes().ct_eq(self.token.as_bytes())) {
            return html(StatusCode::UNAUTHORIZED, LOCKED_PAGE);
        }
        let mut reply = html(StatusCode::OK, ENTER_PAGE);
        let cookie = format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/",
            self.cookie, self.token
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            reply.headers_mut().insert(header::SET_COOKIE, value);
        }
        reply
    }

    fn host_is_ours(&self, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let port = self.port.to_string();
        matches!(host.rsplit_once(':'), Some((name, p))
            if p == port && (name == "127.0.0.1" || name.eq_ignore_ascii_case("localhost")))
    }

    fn origin_is_ours(&self, origin: &HeaderValue) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        origin == format!("http://127.0.0.1:{}", self.port)
            || origin == format!("http://localhost:{}", self.port)
    }

    fn has_cookie(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| {
                name == self.cookie && bool::from(value.as_bytes().ct_eq(self.token.as_bytes()))
            })
    }
}

/// Headers every answer carries.
pub fn harden(headers: &mut HeaderMap) {
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    for (name, value) in fixed {
        // A file from another person has a stricter policy of its own: keep it.
        if name == header::CONTENT_SECURITY_POLICY && headers.contains_key(&name) {
            continue;
        }
        headers.insert(name, value);
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

const LOCKED_PAGE: &str = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\">\
<title>Ferry</title><h1>Ferry</h1><p>Open the link that <code>ferry ui</code> printed in \
its terminal: this browser has not been let in.</p></html>";

const ENTER_PAGE: &str = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"0;url=/\"><title>Ferry</title>\
<p><a href=\"/\">Open Ferry</a></p></html>";

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(4242, "ab".repeat(32))
    }

    fn request(
        method: Method,
        host: &str,
        origin: Option<&str>,
        cookie: Option<&str>,
    ) -> Request<()> {
        let mut builder = Request::builder()
            .method(method)
            .uri("/api/state")
            .header(header::HOST, host);
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        if let Some(cookie) = cookie {
            builder = builder.header(header::COOKIE, cookie);
        }
        builder.body(()).expect("request")
    }

    fn status(result: Result<(), Box<Reply>>) -> Option<StatusCode> {
        result.err().map(|reply| reply.status())
    }

    #[test]
    fn only_our_host_origin_and_cookie_pass() {
        let g = guard();
        let cookie = format!("x=1; ferry-ui-4242={}", "ab".repeat(32));
        let ok = request(
            Method::POST,
            "127.0.0.1:4242",
            Some("http://127.0.0.1:4242"),
            Some(&cookie),
        );
        assert_eq!(status(g.check(&ok)), None);
        let localhost = request(Method::GET, "localhost:4242", None, Some(&cookie));
        assert_eq!(status(g.check(&localhost)), None);

        let rebound = request(Method::GET, "evil.example:4242", None, Some(&cookie));
        assert_eq!(
            status(g.check(&rebound)),
            Some(StatusCode::MISDIRECTED_REQUEST)
        );
        let other_port = request(Method::GET, "127.0.0.1:4243", None, Some(&cookie));
        assert_eq!(
            status(g.check(&other_port)),
            Some(StatusCode::MISDIRECTED_REQUEST)
        );

        let cross_site = request(
            Method::POST,
            "127.0.0.1:4242",
            Some("http://evil.example"),
            Some(&cookie),
        );
        assert_eq!(status(g.check(&cross_site)), Some(StatusCode::FORBIDDEN));
        let no_origin = request(Method::POST, "127.0.0.1:4242", None, Some(&cookie));
        assert_eq!(status(g.check(&no_origin)), Some(StatusCode::FORBIDDEN));
        let cross_read = request(
            Method::GET,
            "127.0.0.1:4242",
            Some("http://evil.example"),
            Some(&cookie),
        );
        assert_eq!(status(g.check(&cross_read)), Some(StatusCode::FORBIDDEN));

        let no_cookie = request(Method::GET, "127.0.0.1:4242", None, None);
        assert_eq!(status(g.check(&no_cookie)), Some(StatusCode::UNAUTHORIZED));
        let wrong = format!("ferry-ui-4242={}", "ac".repeat(32));
        let wrong_cookie = request(Method::GET, "127.0.0.1:4242", None, Some(&wrong));
        assert_eq!(
            status(g.check(&wrong_cookie)),
            Some(StatusCode::UNAUTHORIZED)
        );
        let other_ui = format!("ferry-ui-4243={}", "ab".repeat(32));
        let other_ui = request(Method::GET, "127.0.0.1:4242", None, Some(&other_ui));
        assert_eq!(status(g.check(&other_ui)), Some(StatusCode::UNAUTHORIZED));

        // A login has no cookie yet: only the host and the origin are checked.
        assert_eq!(status(g.check_host_and_origin(&no_cookie)), None);
        assert_eq!(
            status(g.check_host_and_origin(&rebound)),
            Some(StatusCode::MISDIRECTED_REQUEST)
        );
        assert_eq!(
            status(g.check_host_and_origin(&cross_read)),
            Some(StatusCode::FORBIDDEN)
        );
    }

    #[test]
    fn login_sets_the_cookie_only_for_the_token() {
        let g = guard();
        let reply = g.login(&"ab".repeat(32));
        assert_eq!(reply.status(), StatusCode::OK);
        let cookie = reply.headers()[header::SET_COOKIE].to_str().expect("ascii");
        assert!(cookie.starts_with("ferry-ui-4242="), "{cookie}");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));

        let refused = g.login("abab");
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(!refused.headers().contains_key(header::SET_COOKIE));
    }

    #[test]
    fn every_answer_is_hardened_and_a_file_keeps_its_sandbox() {
        let mut headers = HeaderMap::new();
        harden(&mut headers);
        let csp = headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii");
        assert!(csp.starts_with("default-src 'none'; script-src 'self';"));
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");

        let mut file = HeaderMap::new();
        file.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        );
        harden(&mut file);
        assert_eq!(file[header::CONTENT_SECURITY_POLICY], "sandbox");
    }
}
