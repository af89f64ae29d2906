//! Refusing cross-site browser requests to what changes state (HTTP publish), so that a page
//! of another site cannot make a visitor's browser publish.
//!
//! Depends on nothing but `axum`'s header types and [`crate::config::parse_origin`].
//!
//! The danger is credentials the browser adds by itself: HTTP Basic credentials a user once
//! typed into the browser's prompt (our 401 answers offer it) and TLS client certificates go
//! with any request to this server, a form POST from another site included. The rules are those
//! of Go's `net/http.CrossOriginProtection`:
//! 1. `Sec-Fetch-Site` (sent by every current browser, and a header no page can set) decides
//!    when present: `same-origin` and `none` (the user's own navigation) pass; `same-site` and
//!    `cross-site` pass only from an origin in `http.allowed_origins`.
//! 2. Without it, an `Origin` header (sent by older browsers on every cross-origin POST) must
//!    name this server (its host and port equal the `Host` header; the scheme is not compared,
//!    as a TLS-terminating proxy hides it) or an allowed origin.
//! 3. With neither header the request comes from no browser (curl, scripts, `firehose pub`,
//!    the Ansible plugin) and passes: nothing was added to it behind its author's back.

use axum::http::{header, HeaderMap};

use crate::config::parse_origin;

/// A cross-site browser request; holds the `Origin` it came from, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cross-site requests may not publish: a page of another site (Origin {origin:?}) cannot \
     use this browser's credentials here; add the site to http.allowed_origins if it may"
)]
pub struct CrossSite {
    /// The `Origin` header as sent (empty when absent).
    pub origin: String,
}

/// Whether the request may change state; see the module documentation for the rules.
/// `allowed` holds origins as [`parse_origin`] writes them.
///
/// # Errors
/// [`CrossSite`] for a request a browser made on behalf of another site.
pub fn check(headers: &HeaderMap, allowed: &[String]) -> Result<(), CrossSite> {
    let origin = headers.get(header::ORIGIN).map(|value| value.as_bytes());
    let origin_text = origin
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .unwrap_or_default();
    let allowed_origin = || parse_origin(&origin_text).is_some_and(|o| allowed.contains(&o));
    let refuse = || CrossSite {
        origin: origin_text.clone(),
    };
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.as_bytes() {
            b"same-origin" | b"none" => Ok(()),
            _ if allowed_origin() => Ok(()),
            _ => Err(refuse()),
        };
    }
    if origin.is_none() {
        return Ok(());
    }
    let host = headers
        .get(header::HOST)
        .map(|value| value.as_bytes().to_ascii_lowercase());
    let origin_host = parse_origin(&origin_text).and_then(|o| {
        o.split_once("://")
            .map(|(_, authority)| authority.to_owned())
    });
    match (origin_host, host) {
        (Some(origin_host), Some(host)) if origin_host.as_bytes() == host.as_slice() => Ok(()),
        _ if allowed_origin() => Ok(()),
        _ => Err(refuse()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's headers: `Host: firehose.example.org` unless `host` says otherwise,
    /// `Sec-Fetch-Site` and `Origin` when given.
    fn request(host: Option<&str>, site: Option<&str>, origin: Option<&str>) -> HeaderMap {
        [
            (header::HOST, host.or(Some("firehose.example.org"))),
            (header::HeaderName::from_static("sec-fetch-site"), site),
            (header::ORIGIN, origin),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?.parse().ok()?)))
        .collect()
    }

    #[test]
    fn browsers_of_other_sites_are_refused_and_everyone_else_passes() {
        let allowed = vec!["https://dash.example.org".to_owned()];
        let own = Some("https://firehose.example.org");
        let passes = [
            // curl, scripts, the Ansible plugin: no browser headers at all.
            request(None, None, None),
            request(None, Some("same-origin"), own),
            request(None, Some("none"), None),
            request(None, Some("cross-site"), Some("https://DASH.example.org")),
            // Older browsers: Origin only, compared with Host.
            request(Some("h.example:8080"), None, Some("http://h.example:8080")),
            request(None, None, Some("https://dash.example.org")),
        ];
        for headers in passes {
            assert_eq!(check(&headers, &allowed), Ok(()), "{headers:?}");
        }
        let evil = Some("https://evil.example");
        let refused = [
            request(None, Some("cross-site"), evil),
            request(
                None,
                Some("same-site"),
                Some("https://sub.firehose.example.org"),
            ),
            // A form POST from a sandboxed page or a data: URL.
            request(None, Some("cross-site"), Some("null")),
            request(None, None, evil),
            request(None, None, Some("https://firehose.example.org:8443")),
            request(None, None, Some("null")),
        ];
        for headers in refused {
            let refusal = check(&headers, &allowed).expect_err("cross-site");
            let origin = headers
                .get(header::ORIGIN)
                .map(|v| v.to_str().unwrap_or("?"));
            assert_eq!(Some(refusal.origin.as_str()), origin);
        }
        let mut no_host = request(None, None, own);
        no_host.remove(header::HOST);
        assert!(
            check(&no_host, &allowed).is_err(),
            "no Host to compare with"
        );
    }
}
