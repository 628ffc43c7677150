//! Serving every HTTP/2 client whatever it puts in `:authority`.
//!
//! gRPC clients built on C-core (Python `grpcio`, and tools using it) send the unix socket's
//! path as the `:authority` of every request; the HTTP/2 server under tonic (h2) refuses a
//! request whose `:authority` is not a valid URI authority with RST_STREAM, so every call of
//! such a client fails. Kubernetes' Go clients send `localhost`. This layer sits between the
//! unix socket and tonic and rewrites the client's header blocks: a malformed `:authority`
//! becomes `localhost`, everything else is kept. Frames other than HEADERS and CONTINUATION
//! pass through untouched.
//!
//! HPACK is stateful, so every header block is decoded with the client's compression context
//! and encoded again with one of our own, which the server's decoder then follows.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The client connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame the server accepts unless it says otherwise (SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME: usize = 16_384;
/// The largest header block taken (h2's default header list limit is 16 MiB; ours is smaller
/// and generous for gRPC).
const MAX_BLOCK: usize = 1 << 20;
/// What a malformed `:authority` becomes.
const LOCALHOST: &[u8] = b"localhost";

/// A connection whose client header blocks are normalized on the way in.
pub struct AuthorityFix<S> {
    inner: S,
    /// Bytes read from the client, not yet processed.
    input: BytesMut,
    /// Processed bytes for the server to read.
    output: BytesMut,
    preface_seen: bool,
    /// Not HTTP/2 with prior knowledge: everything passes through.
    passthrough: bool,
    eof: bool,
    /// A header block whose CONTINUATION frames are still coming.
    pending: Option<Pending>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
}

struct Pending {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            input: BytesMut::new(),
            output: BytesMut::new(),
            preface_seen: false,
            passthrough: false,
            eof: false,
            pending: None,
            decoder: loona_hpack::Decoder::new(),
            encoder: loona_hpack::Encoder::new(),
        }
    }

    /// Moves every complete frame from `input` to `output`, rewriting header blocks.
    fn process(&mut self) -> io::Result<()> {
        if self.passthrough {
            let all = self.input.split();
            self.output.unsplit(all);
            return Ok(());
        }
        if !self.preface_seen {
            let have = self.input.len().min(PREFACE.len());
            if self.input[..have] != PREFACE[..have] {
                self.passthrough = true;
                return self.process();
            }
            if have < PREFACE.len() {
                return Ok(());
            }
            let preface = self.input.split_to(PREFACE.len());
            self.output.unsplit(preface);
            self.preface_seen = true;
        }
        while self.input.len() >= FRAME_HEADER {
            let length = (usize::from(self.input[0]) << 16)
                | (usize::from(self.input[1]) << 8)
                | usize::from(self.input[2]);
            if self.input.len() < FRAME_HEADER + length {
                break;
            }
            let mut frame = self.input.split_to(FRAME_HEADER + length);
            let (kind, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            match kind {
                HEADERS => {
                    frame.advance(FRAME_HEADER);
                    self.headers(stream, flags, frame)?;
                }
                CONTINUATION => {
                    frame.advance(FRAME_HEADER);
                    self.continuation(stream, flags, &frame)?;
                }
                _ => {
                    if self.pending.is_some() {
                        return Err(protocol("a frame interrupted a header block"));
                    }
                    self.output.unsplit(frame);
                }
            }
        }
        Ok(())
    }

    fn headers(&mut self, stream: u32, flags: u8, mut payload: BytesMut) -> io::Result<()> {
        if self.pending.is_some() {
            return Err(protocol("a HEADERS frame interrupted a header block"));
        }
        let mut padding = 0;
        if flags & PADDED != 0 {
            if payload.is_empty() {
                return Err(protocol("a padded HEADERS frame without its pad length"));
            }
            padding = usize::from(payload[0]);
            payload.advance(1);
        }
        let mut priority = None;
        if flags & PRIORITY != 0 {
            if payload.len() < 5 {
                return Err(protocol("a HEADERS frame too short for its priority"));
            }
            let mut fields = [0u8; 5];
            fields.copy_from_slice(&payload[..5]);
            priority = Some(fields);
            payload.advance(5);
        }
        if padding > payload.len() {
            return Err(protocol("HEADERS padding longer than the frame"));
        }
        payload.truncate(payload.len() - padding);
        self.pending = Some(Pending {
            stream,
            flags,
            priority,
            block: payload.to_vec(),
        });
        if flags & END_HEADERS != 0 {
            self.finish()?;
        }
        Ok(())
    }

    fn continuation(&mut self, stream: u32, flags: u8, payload: &[u8]) -> io::Result<()> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(protocol("a CONTINUATION frame without a header block"));
        };
        if pending.stream != stream {
            return Err(protocol("a CONTINUATION frame of another stream"));
        }
        if pending.block.len() + payload.len() > MAX_BLOCK {
            return Err(protocol("a header block over 1 MiB"));
        }
        pending.block.extend_from_slice(payload);
        if flags & END_HEADERS != 0 {
            self.finish()?;
        }
        Ok(())
    }

    /// Decodes the complete header block, normalizes `:authority`, encodes it again and
    /// writes it out as HEADERS (+ CONTINUATION) frames.
    fn finish(&mut self) -> io::Result<()> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let mut headers = self
            .decoder
            .decode(&pending.block)
            .map_err(|e| protocol(&format!("an undecodable header block: {e}")))?;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                tracing::debug!(authority = %String::from_utf8_lossy(value), "replacing a malformed :authority with localhost");
                *value = LOCALHOST.to_vec();
            }
        }
        let block = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut first = Vec::with_capacity(block.len() + 5);
        if let Some(priority) = pending.priority {
            first.extend_from_slice(&priority);
        }
        let room = MAX_FRAME - first.len();
        let (head, mut rest) = block.split_at(room.min(block.len()));
        first.extend_from_slice(head);
        let mut flags = pending.flags & (END_STREAM | PRIORITY);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.frame(HEADERS, flags, pending.stream, &first);
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(MAX_FRAME.min(rest.len()));
            rest = after;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            self.frame(CONTINUATION, flags, pending.stream, chunk);
        }
        Ok(())
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let length = payload.len() as u32;
        self.output.put_slice(&length.to_be_bytes()[1..]);
        self.output.put_u8(kind);
        self.output.put_u8(flags);
        self.output.put_u32(stream);
        self.output.put_slice(payload);
    }
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2 client: {what}"))
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16_384];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        this.eof = true;
                        // An incomplete frame at the end passes on as it is.
                        let rest = this.input.split();
                        this.output.unsplit(rest);
                    } else {
                        this.input.extend_from_slice(read.filled());
                        this.process()?;
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// The bytes the server reads when a client sends `input`.
    async fn relayed(input: &[u8]) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        tokio::io::AsyncWriteExt::write_all(&mut client, input)
            .await
            .unwrap();
        drop(client);
        let mut out = Vec::new();
        AuthorityFix::new(server)
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }

    /// What the server reads after the layer, decoded back into frames and header lists.
    async fn through(input: Vec<u8>) -> Vec<(u8, u8, Vec<(Vec<u8>, Vec<u8>)>)> {
        let out = relayed(&input).await;
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let mut rest = &out[PREFACE.len()..];
        let mut decoder = loona_hpack::Decoder::new();
        let mut frames = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let mut payload = &rest[9..9 + len];
            rest = &rest[9 + len..];
            if kind == HEADERS && flags & PRIORITY != 0 {
                payload = &payload[5..];
            }
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    frames.push((kind, flags, decoder.decode(&block).unwrap()));
                    block.clear();
                }
            } else {
                frames.push((kind, flags, vec![(payload.to_vec(), Vec::new())]));
            }
        }
        frames
    }

    fn authority(headers: &[(Vec<u8>, Vec<u8>)]) -> String {
        headers
            .iter()
            .find(|(n, _)| n == b":authority")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let mut client = loona_hpack::Encoder::new();
        let request = |authority: &[u8], client: &mut loona_hpack::Encoder| {
            client.encode([
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", b"/csi.v1.Identity/Probe"),
                (b":authority", authority),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ])
        };
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                             // 1: the socket path, split over HEADERS + CONTINUATION, padded, with priority.
        let block = request(
            b"/var/lib/kubelet/plugins/nfs.tether.dev/csi.sock",
            &mut client,
        );
        let (a, b) = block.split_at(block.len() / 2);
        let mut first = vec![3u8]; // pad length
        first.extend_from_slice(&[0, 0, 0, 0, 15]); // priority
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &first));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
                                                                // 3: a valid authority, using the client's dynamic table from stream 1.
        input.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &request(b"localhost:50051", &mut client),
        ));
        // 5: the same socket path again, now indexed in the client's table.
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            5,
            &request(
                b"/var/lib/kubelet/plugins/nfs.tether.dev/csi.sock",
                &mut client,
            ),
        ));
        let frames = through(input).await;
        let headers: Vec<_> = frames
            .iter()
            .filter(|f| f.0 == HEADERS || f.0 == CONTINUATION)
            .collect();
        assert_eq!(headers.len(), 3, "{frames:?}");
        assert_eq!(authority(&headers[0].2), "localhost");
        assert_eq!(authority(&headers[1].2), "localhost:50051");
        assert_eq!(authority(&headers[2].2), "localhost");
        assert!(headers[0]
            .2
            .iter()
            .any(|(n, v)| n == b":path" && v == b"/csi.v1.Identity/Probe"));
        assert_eq!(headers[1].1 & END_STREAM, END_STREAM);
        assert!(
            frames.iter().any(|f| f.0 == 0x0 && f.1 == END_STREAM),
            "DATA passes through"
        );
    }

    #[tokio::test]
    async fn what_is_not_http2_passes_through() {
        assert_eq!(
            relayed(b"GET / HTTP/1.1\r\n\r\n").await,
            b"GET / HTTP/1.1\r\n\r\n"
        );
    }
}
