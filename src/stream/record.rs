//! The TLS record layer of an established connection (RFC 8446 section 5, RFC 5246 section 6.2).
//!
//! rustls runs the handshake (`stream::tls::TlsSetup::accept`); once it is over, its traffic
//! keys are taken out (`dangerous_into_kernel_connection`, the interface meant for kernel TLS)
//! and this module encrypts and decrypts records with them, through ring's AEAD. rustls keeps
//! the key schedule, so a peer's key update (TLS 1.3) is still answered.
//!
//! Why: a rustls connection holds about 6 KiB for its whole life (a 4 KiB receive buffer
//! allocated at the first read and never released, plus its state). Here an idle connection
//! holds only its two keys: records are read into a buffer on the poll's stack and decrypted in
//! place; only a record cut in two by the network, plaintext not read yet, or ciphertext the
//! socket has not taken yet are kept on the heap, and only until they are used.
//!
//! Supported: the AEAD suites rustls offers with ring (AES-128-GCM, AES-256-GCM,
//! ChaCha20-Poly1305) in TLS 1.3 and TLS 1.2. TLS 1.2 renegotiation is refused.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ring::aead;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const HEADER: usize = 5;
const TAG: usize = 16;
/// Largest plaintext in one record (both versions).
const MAX_PLAIN: usize = 1 << 14;
/// Largest record payload accepted: TLS 1.2 allows 2048 bytes of expansion, TLS 1.3 256.
const MAX_PAYLOAD_12: usize = MAX_PLAIN + 2048;
const MAX_PAYLOAD_13: usize = MAX_PLAIN + 256;
/// What sealing adds to a plaintext at most: header, TLS 1.2 explicit nonce, TLS 1.3 content
/// type, tag.
const SEAL_OVERHEAD: usize = HEADER + 8 + 1 + TAG;
/// Bytes read from the socket at once (records longer than what is left are finished in
/// `partial`), and the largest plaintext sealed on the stack.
const READ_SIZE: usize = 4096;

thread_local! {
    /// Where records are sealed before they go to the socket (see `poll_write`).
    static SEAL_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// Key updates answered in a row without application data between them; more is a flood.
const MAX_KEY_UPDATES: u8 = 32;

const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
const CT_APPLICATION_DATA: u8 = 23;
const HS_KEY_UPDATE: u8 = 24;

// Alert descriptions (RFC 8446 section 6).
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const DECODE_ERROR: u8 = 50;
const USER_CANCELED: u8 = 90;
const NO_RENEGOTIATION: u8 = 100;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Version {
    Tls12,
    Tls13,
}

/// One direction's key, nonce base and sequence number.
struct Keys {
    key: aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    /// TLS 1.2 with AES-GCM: an explicit nonce travels in each record.
    explicit_nonce: bool,
}

impl Keys {
    fn new(version: Version, seq: u64, secrets: ConnectionTrafficSecrets) -> io::Result<Keys> {
        let (alg, key, iv, gcm) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv, false),
            _ => return Err(invalid("cipher suite not supported by the record layer")),
        };
        let unbound = aead::UnboundKey::new(alg, key.as_ref()).map_err(|_| invalid("bad traffic key"))?;
        let iv: [u8; 12] = iv.as_ref().try_into().map_err(|_| invalid("bad traffic iv"))?;
        Ok(Keys { key: aead::LessSafeKey::new(unbound), iv, seq, explicit_nonce: gcm && version == Version::Tls12 })
    }

    /// The per-record nonce: the IV with the sequence number XORed into its last 8 bytes (RFC
    /// 8446 section 5.3; RFC 7905; for TLS 1.2 AES-GCM rustls' IV holds the 4-byte salt and an
    /// explicit-nonce base, so the same rule gives the explicit nonce it sends).
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }
}

/// A TLS connection after its handshake.
pub struct TlsStream<IO> {
    io: IO,
    version: Version,
    rx: Keys,
    tx: Keys,
    /// Records per key before it must be replaced (the suite's confidentiality limit).
    limit: u64,
    /// rustls' key schedule, for TLS 1.3 key updates.
    schedule: KernelConnection<ServerConnectionData>,
    /// Bytes of a record not complete yet.
    partial: Vec<u8>,
    /// Plaintext decrypted and not read yet, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Records sealed and not taken by the socket yet, from `unsent_at`.
    unsent: Vec<u8>,
    unsent_at: usize,
    key_updates: u8,
    /// close_notify received: reads return end of stream.
    read_closed: bool,
    /// close_notify sent: no more writes.
    write_closed: bool,
    /// A fatal error ended the connection; every later call returns it.
    failed: Option<&'static str>,
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// Take over a connection whose handshake rustls finished. `early` is application data
    /// rustls decrypted during the handshake, `partial` the start of the next record.
    pub(crate) fn new(
        io: IO,
        secrets: rustls::ExtractedSecrets,
        schedule: KernelConnection<ServerConnectionData>,
        early: Vec<u8>,
        partial: Vec<u8>,
    ) -> io::Result<TlsStream<IO>> {
        let version = match schedule.protocol_version() {
            ProtocolVersion::TLSv1_3 => Version::Tls13,
            ProtocolVersion::TLSv1_2 => Version::Tls12,
            _ => return Err(invalid("protocol version not supported by the record layer")),
        };
        let limit = match schedule.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        Ok(TlsStream {
            io,
            version,
            rx: Keys::new(version, rx_seq, rx)?,
            tx: Keys::new(version, tx_seq, tx)?,
            limit,
            schedule,
            partial,
            plain: early,
            plain_at: 0,
            unsent: Vec::new(),
            unsent_at: 0,
            key_updates: 0,
            read_closed: false,
            write_closed: false,
            failed: None,
        })
    }

    /// Records opened and sealed under the current keys (for tests).
    #[cfg(test)]
    pub(crate) fn sequence(&self) -> (u64, u64) {
        (self.rx.seq, self.tx.seq)
    }

    /// Heap bytes held for records, plaintext and unsent data (for tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.partial.capacity() + self.plain.capacity() + self.unsent.capacity()
    }

    /// Seal one record of content type `ct` into `out`; returns its length.
    /// A key at its confidentiality limit is replaced first (TLS 1.3) or ends the connection.
    fn seal(&mut self, ct: u8, plain: &[u8], out: &mut [u8]) -> io::Result<usize> {
        if self.tx.seq >= self.limit {
            if self.version == Version::Tls13 {
                self.update_tx()?;
            } else {
                return Err(invalid("TLS key used up"));
            }
        }
        self.seal_current(ct, plain, out)
    }

    /// Seal with the current key, whatever its count.
    fn seal_current(&mut self, ct: u8, plain: &[u8], out: &mut [u8]) -> io::Result<usize> {
        debug_assert!(plain.len() <= MAX_PLAIN && out.len() >= plain.len() + SEAL_OVERHEAD);
        let nonce = self.tx.nonce();
        // (outer content type, bytes before the plaintext, bytes sealed, additional data)
        let (body_at, body_len, aad, aad_len) = match self.version {
            Version::Tls13 => {
                // The real content type goes inside, after the content (RFC 8446 section 5.2).
                let len = plain.len() + 1 + TAG;
                let header = [CT_APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
                out[..HEADER].copy_from_slice(&header);
                out[HEADER + plain.len()] = ct;
                let mut aad = [0u8; 13];
                aad[..HEADER].copy_from_slice(&header);
                (HEADER, plain.len() + 1, aad, HEADER)
            }
            Version::Tls12 => {
                let explicit = if self.tx.explicit_nonce { 8 } else { 0 };
                let len = explicit + plain.len() + TAG;
                out[..HEADER].copy_from_slice(&[ct, 3, 3, (len >> 8) as u8, len as u8]);
                out[HEADER..HEADER + explicit].copy_from_slice(&nonce[4..4 + explicit]);
                (HEADER + explicit, plain.len(), aad12(self.tx.seq, ct, plain.len()), 13)
            }
        };
        out[body_at..body_at + plain.len()].copy_from_slice(plain);
        let body = &mut out[body_at..body_at + body_len];
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::from(&aad[..aad_len]), body)
            .map_err(|_| invalid("encryption failed"))?;
        let end = body_at + body_len;
        out[end..end + TAG].copy_from_slice(tag.as_ref());
        self.tx.seq += 1;
        Ok(end + TAG)
    }

    /// Queue one sealed record for the socket.
    fn queue(&mut self, ct: u8, plain: &[u8]) -> io::Result<()> {
        let mut buf = [0u8; 64 + SEAL_OVERHEAD];
        debug_assert!(plain.len() <= 64);
        let n = self.seal(ct, plain, &mut buf)?;
        self.unsent.extend_from_slice(&buf[..n]);
        Ok(())
    }

    /// TLS 1.3: send a KeyUpdate (update_not_requested) under the old key, then switch.
    fn update_tx(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 5 + SEAL_OVERHEAD];
        // update_not_requested, under the key it replaces.
        let n = self.seal_current(CT_HANDSHAKE, &[HS_KEY_UPDATE, 0, 0, 1, 0], &mut buf)?;
        self.unsent.extend_from_slice(&buf[..n]);
        let (seq, secrets) = self.schedule.update_tx_secret().map_err(|_| invalid("key update failed"))?;
        self.tx = Keys::new(self.version, seq, secrets)?;
        Ok(())
    }

    /// A fatal error: queue the alert, keep the reason, return it as an error.
    fn fail(&mut self, cx: &mut Context<'_>, alert: u8, what: &'static str) -> io::Error {
        if self.failed.is_none() {
            self.failed = Some(what);
            if !self.write_closed {
                self.write_closed = true;
                if self.queue(CT_ALERT, &[2, alert]).is_ok() {
                    // Best effort: the connection is over either way.
                    let _ = self.poll_drain(cx);
                }
            }
        }
        invalid(what)
    }

    /// Write queued records to the socket.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.unsent_at < self.unsent.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.unsent[self.unsent_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unsent_at += n;
        }
        if !self.unsent.is_empty() {
            self.unsent = Vec::new();
            self.unsent_at = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Open one whole record in place; what it held goes to `out` (application data), or is
    /// acted on (alerts, key updates).
    fn open(&mut self, cx: &mut Context<'_>, record: &mut [u8], out: &mut ReadBuf<'_>) -> io::Result<()> {
        let ct = record[0];
        let len = record.len() - HEADER;
        if self.rx.seq >= self.limit {
            return Err(self.fail(cx, UNEXPECTED_MESSAGE, "peer did not replace a used-up key"));
        }
        let nonce_base = self.rx.nonce();
        let (header, payload) = record.split_at_mut(HEADER);
        let (plain_len, ct) = match self.version {
            Version::Tls13 => {
                if ct != CT_APPLICATION_DATA || len < TAG + 1 {
                    return Err(self.fail(cx, UNEXPECTED_MESSAGE, "unexpected TLS record"));
                }
                let aad = aead::Aad::from(&header[..]);
                let opened = self.rx.key.open_in_place(aead::Nonce::assume_unique_for_key(nonce_base), aad, payload);
                let Ok(opened) = opened else {
                    return Err(self.fail(cx, BAD_RECORD_MAC, "TLS record failed authentication"));
                };
                // Content, then the real content type, then zero padding.
                let Some(at) = opened.iter().rposition(|&b| b != 0) else {
                    return Err(self.fail(cx, UNEXPECTED_MESSAGE, "TLS record without content type"));
                };
                if at > MAX_PLAIN {
                    return Err(self.fail(cx, RECORD_OVERFLOW, "TLS record too long"));
                }
                (at, opened[at])
            }
            Version::Tls12 => {
                if !matches!(ct, CT_APPLICATION_DATA | CT_ALERT | CT_HANDSHAKE) {
                    return Err(self.fail(cx, UNEXPECTED_MESSAGE, "unexpected TLS record"));
                }
                let explicit = if self.rx.explicit_nonce { 8 } else { 0 };
                if len < explicit + TAG {
                    return Err(self.fail(cx, DECODE_ERROR, "TLS record too short"));
                }
                let mut nonce = nonce_base;
                if explicit > 0 {
                    nonce[4..].copy_from_slice(&payload[..8]);
                }
                let plain_len = len - explicit - TAG;
                let aad = aad12(self.rx.seq, ct, plain_len);
                let body = &mut payload[explicit..];
                let opened = self.rx.key.open_in_place(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::from(&aad[..]), body);
                if opened.is_err() {
                    return Err(self.fail(cx, BAD_RECORD_MAC, "TLS record failed authentication"));
                }
                if plain_len > MAX_PLAIN {
                    return Err(self.fail(cx, RECORD_OVERFLOW, "TLS record too long"));
                }
                payload.copy_within(explicit..explicit + plain_len, 0);
                (plain_len, ct)
            }
        };
        self.rx.seq += 1;
        let content = &payload[..plain_len];
        match ct {
            CT_APPLICATION_DATA => {
                self.key_updates = 0;
                let n = content.len().min(out.remaining());
                out.put_slice(&content[..n]);
                if n < content.len() {
                    self.plain.extend_from_slice(&content[n..]);
                }
                Ok(())
            }
            CT_ALERT => {
                let [level, desc] = content else {
                    return Err(self.fail(cx, DECODE_ERROR, "malformed TLS alert"));
                };
                match (*level, *desc) {
                    (_, CLOSE_NOTIFY) => {
                        self.read_closed = true;
                        Ok(())
                    }
                    // user_canceled and TLS 1.2 warnings carry no meaning of their own; in TLS
                    // 1.3 every other alert is fatal whatever its level (RFC 8446 section 6).
                    (_, USER_CANCELED) => Ok(()),
                    (1, _) if self.version == Version::Tls12 => Ok(()),
                    _ => {
                        self.failed = Some("TLS alert from the peer");
                        self.write_closed = true;
                        Err(io::Error::new(io::ErrorKind::ConnectionAborted, "TLS alert from the peer"))
                    }
                }
            }
            CT_HANDSHAKE if self.version == Version::Tls13 => {
                let mut rest = content;
                let mut update_requested = false;
                while !rest.is_empty() {
                    // Only KeyUpdate is valid from a client after the handshake (no
                    // post-handshake authentication is requested).
                    let [typ, a, b, c, ref tail @ ..] = *rest else {
                        return Err(self.fail(cx, UNEXPECTED_MESSAGE, "handshake message split across records"));
                    };
                    let len = u32::from_be_bytes([0, a, b, c]) as usize;
                    if typ != HS_KEY_UPDATE || len != 1 || tail.is_empty() || tail[0] > 1 {
                        return Err(self.fail(cx, UNEXPECTED_MESSAGE, "unexpected handshake message"));
                    }
                    update_requested |= tail[0] == 1;
                    rest = &tail[1..];
                    self.key_updates += 1;
                    if self.key_updates > MAX_KEY_UPDATES {
                        return Err(self.fail(cx, UNEXPECTED_MESSAGE, "too many key updates"));
                    }
                    let (seq, secrets) = self.schedule.update_rx_secret().map_err(|_| invalid("key update failed"))?;
                    self.rx = Keys::new(self.version, seq, secrets)?;
                }
                if update_requested {
                    // RFC 8446 section 4.6.3: answer before any further application data.
                    self.update_tx()?;
                    let _ = self.poll_drain(cx)?;
                }
                Ok(())
            }
            CT_HANDSHAKE => Err(self.fail(cx, NO_RENEGOTIATION, "TLS renegotiation refused")),
            _ => Err(self.fail(cx, UNEXPECTED_MESSAGE, "unexpected TLS content type")),
        }
    }
}

/// TLS 1.2 additional data: sequence number, content type, version, plaintext length.
fn aad12(seq: u64, ct: u8, len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = ct;
    a[9] = 3;
    a[10] = 3;
    a[11] = (len >> 8) as u8;
    a[12] = len as u8;
    a
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    fn max_payload(&self) -> usize {
        if self.version == Version::Tls13 {
            MAX_PAYLOAD_13
        } else {
            MAX_PAYLOAD_12
        }
    }

    /// Length of the record at the start of `partial`, header included (its header is there).
    fn record_len(&self) -> usize {
        HEADER + u16::from_be_bytes([self.partial[3], self.partial[4]]) as usize
    }

    /// Finish the record begun in `partial`, reading straight into it; `Ready(true)` once it
    /// was opened and gave application data.
    fn poll_partial(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<bool>> {
        loop {
            let want = if self.partial.len() < HEADER {
                HEADER
            } else if self.record_len() > HEADER + self.max_payload() {
                return Poll::Ready(Err(self.fail(cx, RECORD_OVERFLOW, "TLS record too long")));
            } else {
                self.record_len()
            };
            let have = self.partial.len();
            if have >= want {
                break;
            }
            self.partial.resize(want, 0);
            let mut rb = ReadBuf::new(&mut self.partial[have..]);
            let polled = Pin::new(&mut self.io).poll_read(cx, &mut rb);
            let got = rb.filled().len();
            self.partial.truncate(have + got);
            ready!(polled)?;
            if got == 0 {
                self.read_closed = true;
                self.partial = Vec::new();
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        let rest = if self.partial.len() > self.record_len() { self.partial.split_off(self.record_len()) } else { Vec::new() };
        let mut record = std::mem::replace(&mut self.partial, rest);
        let before = out.filled().len();
        self.open(cx, &mut record, out)?;
        Poll::Ready(Ok(out.filled().len() > before))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain.len() {
                let n = (this.plain.len() - this.plain_at).min(out.remaining());
                out.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                if this.plain_at == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(what) = this.failed {
                return Poll::Ready(Err(invalid(what)));
            }
            if this.read_closed || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !this.partial.is_empty() {
                if ready!(this.poll_partial(cx, out))? {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // Nothing held: read into the stack (not zeroed: only what the read fills is
            // looked at), open every whole record, keep the rest.
            let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_SIZE];
            let mut rb = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            let got = rb.filled_mut();
            let end = got.len();
            if end == 0 {
                // End of stream without close_notify: the caller sees an end of stream.
                this.read_closed = true;
                return Poll::Ready(Ok(()));
            }
            let before = out.filled().len();
            let mut at = 0;
            while end - at >= HEADER && !this.read_closed {
                let len = u16::from_be_bytes([got[at + 3], got[at + 4]]) as usize;
                if len > this.max_payload() {
                    return Poll::Ready(Err(this.fail(cx, RECORD_OVERFLOW, "TLS record too long")));
                }
                if end - at < HEADER + len {
                    break;
                }
                let record = &mut got[at..at + HEADER + len];
                at += HEADER + len;
                this.open(cx, record, out)?;
            }
            if at < end && !this.read_closed {
                this.partial = got[at..end].to_vec();
            }
            if out.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if let Some(what) = this.failed {
            return Poll::Ready(Err(invalid(what)));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_PLAIN);
        // Sealed in the thread's scratch buffer: nothing held per connection, nothing zeroed
        // per record.
        SEAL_SCRATCH.with_borrow_mut(|out| {
            if out.len() < n + SEAL_OVERHEAD {
                out.resize(n + SEAL_OVERHEAD, 0);
            }
            let len = this.seal(CT_APPLICATION_DATA, &buf[..n], out)?;
            if this.unsent.is_empty() {
                match Pin::new(&mut this.io).poll_write(cx, &out[..len]) {
                    Poll::Ready(Ok(w)) if w >= len => return Poll::Ready(Ok(n)),
                    Poll::Ready(Ok(w)) => this.unsent.extend_from_slice(&out[w..len]),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => this.unsent.extend_from_slice(&out[..len]),
                }
            } else {
                // A key update was queued ahead of this record.
                this.unsent.extend_from_slice(&out[..len]);
                let _ = this.poll_drain(cx)?;
            }
            // The plaintext is taken; what the socket did not accept yet waits in `unsent`,
            // and the next write or flush sends it first.
            Poll::Ready(Ok(n))
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            this.queue(CT_ALERT, &[1, CLOSE_NOTIFY])?;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_connection_is_small() {
        // Two AEAD keys (about 800 bytes each with AES-GCM's tables), the socket, sequence
        // numbers, and empty buffers.
        let size = std::mem::size_of::<super::TlsStream<tokio::net::TcpStream>>();
        assert!(size < 2048, "{size} bytes");
    }
}
