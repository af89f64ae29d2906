//! A small HTTP client for the commands that read a Firehose server's history API (`replay`,
//! `sub`): JSON pages and Server-Sent Event streams over HTTP or HTTPS.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::Response;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::net::{self, ServerUrl, TlsOptions};

/// How long a server may take to answer a page request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The client, shared by every request of one command.
pub(crate) struct HttpClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    tls: TlsOptions,
}

impl HttpClient {
    pub(crate) fn new() -> HttpClient {
        HttpClient::with_tls(TlsOptions::default())
    }

    /// A client that also speaks `https://`, trusting `tls`'s roots.
    pub(crate) fn with_tls(tls: TlsOptions) -> HttpClient {
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            tls,
        }
    }

    /// One request over a fresh TLS connection (the pooled client speaks plain HTTP only).
    async fn send_tls(
        &self,
        url: &str,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Response<Incoming>> {
        let server = ServerUrl::parse(url)?;
        let after_authority = url
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        let target = after_authority
            .find('/')
            .map(|at| &after_authority[at..])
            .unwrap_or("/");
        let stream = net::connect(&server, &self.tls).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .with_context(|| format!("HTTP handshake with {url} failed"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = hyper::Request::get(target).header("host", server.authority());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Empty::new())
            .with_context(|| format!("invalid URL {url}"))?;
        tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(request))
            .await
            .with_context(|| format!("no answer from {url} within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("cannot reach {url}"))
    }

    async fn send(
        &self,
        url: &str,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Response<Incoming>> {
        let response = if url.starts_with("https://") {
            self.send_tls(url, headers).await?
        } else {
            if !url.starts_with("http://") {
                bail!("expected an http:// or https:// server, got {url}");
            }
            let mut request = hyper::Request::get(url);
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            let request = request
                .body(Empty::new())
                .with_context(|| format!("invalid URL {url}"))?;
            tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
                .await
                .with_context(|| format!("no answer from {url} within {REQUEST_TIMEOUT:?}"))?
                .with_context(|| format!("cannot reach {url}"))?
        };
        if !response.status().is_success() {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            bail!("{url} answered {status}: {message}");
        }
        Ok(response)
    }

    /// GETs a JSON document.
    pub(crate) async fn get_json(&self, url: &str) -> anyhow::Result<serde_json::Value> {
        let response = self.send(url, &[]).await?;
        let body = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
            .await
            .with_context(|| format!("{url} did not finish its answer"))?
            .with_context(|| format!("reading the answer of {url}"))?
            .to_bytes();
        serde_json::from_slice(&body).with_context(|| format!("{url} did not answer JSON"))
    }

    /// Follows a Server-Sent Events stream, calling `on_event(id, data)` for each event, until
    /// the server ends it (an error) or `on_event` returns false.
    pub(crate) async fn follow_sse(
        &self,
        url: &str,
        last_event_id: Option<u64>,
        mut on_event: impl FnMut(Option<u64>, &str) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let headers: Vec<(&str, String)> = last_event_id
            .map(|id| vec![("last-event-id", id.to_string())])
            .unwrap_or_default();
        let mut body = self.send(url, &headers).await?.into_body();
        let mut parser = SseParser::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.with_context(|| format!("the stream from {url} broke"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for (id, data) in parser.push(&data) {
                if !on_event(id, &data)? {
                    return Ok(());
                }
            }
        }
        bail!("{url} closed the stream")
    }
}

impl HttpClient {
    /// Opens a Server-Sent Events stream to read event by event.
    ///
    /// # Errors
    /// Unreachable server or an error answer (with the server's message).
    pub(crate) async fn open_sse(
        &self,
        url: &str,
        last_event_id: Option<u64>,
    ) -> anyhow::Result<SseStream> {
        let headers: Vec<(&str, String)> = last_event_id
            .map(|id| vec![("last-event-id", id.to_string())])
            .unwrap_or_default();
        let body = self.send(url, &headers).await?.into_body();
        Ok(SseStream {
            body,
            parser: SseParser::default(),
            ready: VecDeque::new(),
            url: url.to_owned(),
        })
    }
}

/// An open Server-Sent Events stream.
pub(crate) struct SseStream {
    body: Incoming,
    parser: SseParser,
    ready: VecDeque<(Option<u64>, String)>,
    url: String,
}

impl SseStream {
    /// The next event as `(id, data)`. Cancel-safe: parsed events wait in a queue.
    ///
    /// # Errors
    /// The stream broke or the server ended it.
    pub(crate) async fn next(&mut self) -> anyhow::Result<(Option<u64>, String)> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            let Some(frame) = self.body.frame().await else {
                bail!("{} closed the stream", self.url);
            };
            let frame = frame.with_context(|| format!("the stream from {} broke", self.url))?;
            if let Ok(data) = frame.into_data() {
                self.ready.extend(self.parser.push(&data));
            }
        }
    }
}

/// Incremental `text/event-stream` parser: feed bytes, get complete events.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    pending: Vec<u8>,
    id: Option<u64>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete as `(id, data)`.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<(Option<u64>, String)> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push((self.id.take(), self.data.join("\n")));
                    self.data.clear();
                }
                self.id = None;
                continue;
            }
            if line.starts_with(':') {
                continue; // comment (heartbeat)
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => self.data.push(value.to_owned()),
                "id" => self.id = value.parse().ok(),
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks_and_comments_ignored() {
        let mut parser = SseParser::default();
        assert!(parser.push(b": heartbeat\n\nid: 7\nda").is_empty());
        let events = parser.push(b"ta: {\"a\":1}\n\nid: 8\ndata: x\ndata: y\n\n");
        assert_eq!(
            events,
            vec![
                (Some(7), "{\"a\":1}".to_owned()),
                (Some(8), "x\ny".to_owned())
            ]
        );
    }
}
