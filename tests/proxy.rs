//! A real forwarding proxy on loopback that records every connection it accepts and what
//! it was asked for: HTTP (absolute-form requests and CONNECT) and SOCKS5, told apart by
//! the first byte. Only the first request of a connection is recorded; tests that need
//! more look at the receiver.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What one connection to the proxy asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// An HTTP request line (`POST http://… HTTP/1.1` or `CONNECT host:port HTTP/1.1`)
    /// with its `Host` and `Proxy-Authorization` headers.
    Http {
        line: String,
        host: Option<String>,
        authorization: Option<String>,
    },
    /// A SOCKS5 CONNECT: `ip:port`, or `name:port` when the client left the lookup to
    /// the proxy.
    Socks5 { target: String },
    /// A connection that sent nothing understandable.
    Other,
}

#[derive(Debug, Clone)]
pub struct RecordingProxy {
    pub addr: SocketAddr,
    asked: Arc<Mutex<Vec<Asked>>>,
}

impl RecordingProxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let asked = Arc::new(Mutex::new(Vec::new()));
        let record = asked.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let _ = serve(client, &record).await;
                });
            }
        });
        Self { addr, asked }
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn socks5_url(&self) -> String {
        format!("socks5://{}", self.addr)
    }

    /// Everything asked so far, one entry per connection.
    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().expect("record").clone()
    }
}

async fn serve(client: TcpStream, record: &Mutex<Vec<Asked>>) -> std::io::Result<()> {
    let mut client = BufReader::new(client);
    let first = client.fill_buf().await?.first().copied();
    if first == Some(5) {
        return socks5(client, record).await;
    }
    let mut line = String::new();
    client.read_line(&mut line).await?;
    let mut head = Vec::new();
    loop {
        let mut header = String::new();
        if client.read_line(&mut header).await? == 0 || header.trim().is_empty() {
            break;
        }
        head.push(header);
    }
    let header = |name: &str| {
        head.iter().find_map(|h| {
            let (key, value) = h.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        record.lock().expect("record").push(Asked::Other);
        return Ok(());
    };
    record.lock().expect("record").push(Asked::Http {
        line: line.trim().to_owned(),
        host: header("host"),
        authorization: header("proxy-authorization"),
    });
    if method == "CONNECT" {
        let mut upstream = TcpStream::connect(target).await?;
        client
            .get_mut()
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    // Forward an absolute-form request as origin-form, headers unchanged.
    let Some(rest) = target.strip_prefix("http://") else {
        return Ok(());
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut upstream = TcpStream::connect(authority.as_str()).await?;
    let path = if path.is_empty() { "/" } else { path };
    let version = parts.next().unwrap_or("HTTP/1.1");
    upstream
        .write_all(format!("{method} {path} {version}\r\n{}\r\n", head.concat()).as_bytes())
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

async fn socks5(
    mut client: BufReader<TcpStream>,
    record: &Mutex<Vec<Asked>>,
) -> std::io::Result<()> {
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting).await?;
    let mut methods = vec![0u8; usize::from(greeting[1])];
    client.read_exact(&mut methods).await?;
    if methods.contains(&0) {
        client.get_mut().write_all(&[5, 0]).await?;
    } else {
        // Username and password (RFC 1929): accepted, whatever they are.
        client.get_mut().write_all(&[5, 2]).await?;
        let mut version_and_length = [0u8; 2];
        client.read_exact(&mut version_and_length).await?;
        let mut user = vec![0u8; usize::from(version_and_length[1])];
        client.read_exact(&mut user).await?;
        let password_length = client.read_u8().await?;
        let mut password = vec![0u8; usize::from(password_length)];
        client.read_exact(&mut password).await?;
        client.get_mut().write_all(&[1, 0]).await?;
    }
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await?;
    let host = match request[3] {
        1 => {
            let mut octets = [0u8; 4];
            client.read_exact(&mut octets).await?;
            std::net::Ipv4Addr::from(octets).to_string()
        }
        4 => {
            let mut octets = [0u8; 16];
            client.read_exact(&mut octets).await?;
            format!("[{}]", std::net::Ipv6Addr::from(octets))
        }
        3 => {
            let length = client.read_u8().await?;
            let mut name = vec![0u8; usize::from(length)];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        _ => {
            record.lock().expect("record").push(Asked::Other);
            return Ok(());
        }
    };
    let port = client.read_u16().await?;
    let target = format!("{host}:{port}");
    record.lock().expect("record").push(Asked::Socks5 {
        target: target.clone(),
    });
    let mut upstream = TcpStream::connect(target.as_str()).await?;
    client
        .get_mut()
        .write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
