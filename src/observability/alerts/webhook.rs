//! The optional alert webhook: each firing or resolved alert is POSTed as JSON to an
//! `http://host:port/path` URL. A plain HTTP/1.1 request over a TCP stream is all it
//! takes, so no HTTP client is pulled in; TLS endpoints sit behind a local relay.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::AlertEvent;
use crate::error::Error;

const TIMEOUT: Duration = Duration::from_secs(5);

/// `http://host[:port][/path]` → (host:port, path), or why not.
pub fn parse_url(url: &str) -> Result<(String, String), Error> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        Error::invalid_input(format!(
            "alert webhook {url:?}: only http:// URLs are supported"
        ))
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || path.contains(['\r', '\n', ' ']) {
        return Err(Error::invalid_input(format!(
            "alert webhook {url:?} is not a URL"
        )));
    }
    let authority = match authority.contains(':') {
        true => authority.to_string(),
        false => format!("{authority}:80"),
    };
    Ok((authority, path.to_string()))
}

/// POSTs `event`; an answer other than 2xx is an error.
pub async fn post(url: &str, event: &AlertEvent) -> Result<(), Error> {
    let (authority, path) = parse_url(url)?;
    let body = serde_json::to_vec(event)
        .map_err(|e| Error::internal(format!("cannot encode an alert: {e}")))?;
    let exchange = async {
        let mut stream = TcpStream::connect(&authority).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| Error::timeout(format!("alert webhook {url} did not answer in {TIMEOUT:?}")))?
        .map_err(|e| Error::unavailable(format!("alert webhook {url}: {e}")))?;
    let status_line = String::from_utf8_lossy(&answer);
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(Error::unavailable(format!(
            "alert webhook {url} answered {:?}",
            status_line.lines().next().unwrap_or("nothing")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_http_urls_only() {
        assert_eq!(
            parse_url("http://127.0.0.1:9000/hooks/alerts").unwrap(),
            ("127.0.0.1:9000".into(), "/hooks/alerts".into())
        );
        assert_eq!(
            parse_url("http://example").unwrap(),
            ("example:80".into(), "/".into())
        );
        assert!(parse_url("https://example/x").is_err());
        assert!(parse_url("http:///x").is_err());
    }
}
