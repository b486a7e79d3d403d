//! A minimal HTTP/1.1 client over one keep-alive connection: enough to POST events and read small answers
//! without pulling an HTTP client stack into the bench.

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct HttpConnection {
    address: String,
    stream: Option<BufReader<TcpStream>>,
}

impl HttpConnection {
    pub fn new(address: &str) -> Self {
        Self { address: address.to_owned(), stream: None }
    }

    /// Sends one request and reads its answer; the connection is kept for the next one. One retry on a
    /// fresh connection when a kept one turns out to be closed.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{headers}Content-Length: {}\r\n\r\n",
            self.address,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let reused = self.stream.is_some();
        match self.exchange(&request).await {
            Ok(answer) => Ok(answer),
            Err(_) if reused => {
                self.stream = None;
                self.exchange(&request).await
            }
            Err(error) => Err(error),
        }
    }

    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.address)
                .await
                .with_context(|| format!("connecting to {}", self.address))?;
            stream.set_nodelay(true)?;
            self.stream = Some(BufReader::new(stream));
        }
        let result = async {
            let stream = self.stream.as_mut().expect("connected above");
            stream.get_mut().write_all(request).await?;
            read_response(stream).await
        }
        .await;
        if result.is_err() {
            self.stream = None;
        }
        let (status, body, close) = result?;
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }
}

async fn read_response(stream: &mut BufReader<TcpStream>) -> anyhow::Result<(u16, Vec<u8>, bool)> {
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        bail!("connection closed");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
    let mut length = 0usize;
    let mut close = false;
    let mut chunked = false;
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            bail!("connection closed in the headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse()?,
                "connection" => close = value.eq_ignore_ascii_case("close"),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            stream.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim(), 16)?;
            let mut chunk = vec![0; size + 2];
            stream.read_exact(&mut chunk).await?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body.resize(length, 0);
        stream.read_exact(&mut body).await?;
    }
    Ok((status, body, close))
}

/// One GET on a fresh connection.
pub async fn get(address: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let (status, body) = HttpConnection::new(address).request("GET", path, "", b"").await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
