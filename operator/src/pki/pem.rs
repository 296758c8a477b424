//! PEM armour: reading blocks out of text and writing canonical blocks.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::Error;

/// PEM label of an X.509 certificate.
pub(crate) const CERTIFICATE: &str = "CERTIFICATE";

/// One decoded PEM block.
pub(crate) struct Block {
    /// The label between `BEGIN ` and the trailing dashes.
    pub(crate) label: String,
    /// The base64-decoded contents.
    pub(crate) der: Vec<u8>,
}

/// Decodes every PEM block in `text`; text outside blocks is ignored.
pub(crate) fn blocks(text: &str, what: &'static str) -> Result<Vec<Block>, Error> {
    x509_parser::pem::Pem::iter_from_buffer(text.as_bytes())
        .map(|block| {
            block
                .map(|pem| Block {
                    label: pem.label,
                    der: pem.contents,
                })
                .map_err(|e| Error::Pem {
                    what,
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// Decodes every `CERTIFICATE` block in `text`, in order, failing if there is none.
pub(crate) fn certificates(text: &str, what: &'static str) -> Result<Vec<Vec<u8>>, Error> {
    let certs: Vec<Vec<u8>> = blocks(text, what)?
        .into_iter()
        .filter(|b| b.label == CERTIFICATE)
        .map(|b| b.der)
        .collect();
    if certs.is_empty() {
        return Err(Error::NoPem {
            what,
            expected: "certificate",
        });
    }
    Ok(certs)
}

/// Decodes the single `CERTIFICATE` block in `text`.
pub(crate) fn single_certificate(text: &str, what: &'static str) -> Result<Vec<u8>, Error> {
    let mut certs = certificates(text, what)?;
    match certs.len() {
        1 => Ok(certs.remove(0)),
        found => Err(Error::CertificateCount { what, found }),
    }
}

/// Encodes `der` as one PEM block with 64-column lines and `\n` line endings.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // base64 output is ASCII, so splitting at byte offsets is safe.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Lowercase hex of `bytes`, no separators.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_round_trips_and_wraps_at_64_columns() {
        let der: Vec<u8> = (0..=255u8).collect();
        let pem = encode(CERTIFICATE, &der);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(single_certificate(&pem, "test").unwrap(), der);
    }

    #[test]
    fn certificates_ignores_other_blocks_and_text() {
        let a = encode(CERTIFICATE, b"a");
        let key = encode("PRIVATE KEY", b"k");
        let text = format!("subject=foo\n{a}\n{key}junk\n{a}");
        assert_eq!(
            certificates(&text, "t").unwrap(),
            vec![b"a".to_vec(), b"a".to_vec()]
        );
        assert_eq!(
            single_certificate(&text, "t"),
            Err(Error::CertificateCount {
                what: "t",
                found: 2
            })
        );
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(matches!(
            certificates("not pem at all", "t"),
            Err(Error::NoPem { .. })
        ));
        assert!(matches!(
            certificates(
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "t"
            ),
            Err(Error::Pem { .. })
        ));
        assert!(matches!(
            certificates("-----BEGIN CERTIFICATE-----\nAAAA\n", "t"),
            Err(Error::Pem { .. })
        ));
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
