//! Deciding whether a cluster's existing `cacerts` must be reissued.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;

use super::issue::{CacertsBundle, IntermediatePolicy, RootCa, SKEW_SECONDS, signed_by};
use super::{inspect, keys, pem};

/// How far an intermediate's validity span may drift from `lifetime + CLOCK_SKEW` before
/// it counts as [`ReissueReason::LifetimeChanged`].
pub const LIFETIME_TOLERANCE: Duration = Duration::from_secs(60);

/// Why a cluster's `cacerts` must be (re)issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReissueReason {
    /// There is no `cacerts` Secret yet.
    Missing,
    /// The certificate or key cannot be parsed, or the certificate is not a signing CA.
    Malformed,
    /// `ca-key.pem` is not the private key of `ca-cert.pem`.
    KeyMismatch,
    /// The intermediate's signature does not verify with the federation root's key.
    NotSignedByRoot,
    /// The intermediate's locality names a different cluster.
    ClusterChanged,
    /// The intermediate's key algorithm differs from the policy.
    AlgorithmChanged,
    /// The intermediate's validity span differs from the policy's lifetime.
    LifetimeChanged,
    /// `root-cert.pem` differs from the trust bundle, or `cert-chain.pem` is not intermediate + root.
    TrustBundleChanged,
    /// The intermediate is within `renew_before` of its notAfter.
    RenewalDue,
    /// The intermediate is past its notAfter (or before its notBefore).
    Expired,
}

impl ReissueReason {
    /// Short human text for events and status conditions.
    pub fn describe(&self) -> &'static str {
        match self {
            ReissueReason::Missing => "cacerts secret does not exist",
            ReissueReason::Malformed => {
                "cacerts secret is unreadable or does not hold a signing CA certificate and key"
            }
            ReissueReason::KeyMismatch => "ca-key.pem does not belong to ca-cert.pem",
            ReissueReason::NotSignedByRoot => {
                "intermediate CA is not signed by the federation root CA"
            }
            ReissueReason::ClusterChanged => "intermediate CA was issued for another cluster",
            ReissueReason::AlgorithmChanged => {
                "intermediate CA key algorithm differs from the configured one"
            }
            ReissueReason::LifetimeChanged => {
                "intermediate CA lifetime differs from the configured one"
            }
            ReissueReason::TrustBundleChanged => {
                "root-cert.pem or cert-chain.pem does not match the federation trust bundle"
            }
            ReissueReason::RenewalDue => "intermediate CA is due for renewal",
            ReissueReason::Expired => "intermediate CA is expired or not yet valid",
        }
    }
}

impl fmt::Display for ReissueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Why `existing` must be reissued for `cluster` under `root`, `trust_bundle_pem` and
/// `policy` at `now`; `None` means leave the Secret byte-identical.
///
/// Checks run in this order, the first failing one is reported: Missing, Malformed,
/// KeyMismatch, NotSignedByRoot, Expired, ClusterChanged, AlgorithmChanged,
/// LifetimeChanged, TrustBundleChanged, RenewalDue. Renewal is due when
/// `now >= notAfter - renew_before`, except when notAfter already equals (or exceeds) the
/// root's notAfter: a new intermediate could not live longer, so only rotating the root helps.
pub fn reissue_reason(
    existing: Option<&CacertsBundle>,
    root: &RootCa,
    trust_bundle_pem: &str,
    cluster: &str,
    policy: &IntermediatePolicy,
    now: Timestamp,
) -> Option<ReissueReason> {
    const WHAT: &str = "ca-cert.pem";
    let Some(existing) = existing else {
        return Some(ReissueReason::Missing);
    };
    let Ok(der) = pem::single_certificate(&existing.ca_cert_pem, WHAT) else {
        return Some(ReissueReason::Malformed);
    };
    let Ok(cert) = inspect::parse_der(&der, WHAT) else {
        return Some(ReissueReason::Malformed);
    };
    let Ok(info) = inspect::info_from_cert(&cert, &der, WHAT) else {
        return Some(ReissueReason::Malformed);
    };
    if !info.is_ca || !info.key_cert_sign {
        return Some(ReissueReason::Malformed);
    }
    let Ok(key) = keys::load(&existing.ca_key_pem, "ca-key.pem") else {
        return Some(ReissueReason::Malformed);
    };
    if !key.matches(cert.public_key()) {
        return Some(ReissueReason::KeyMismatch);
    }
    let signed = inspect::parse_der(root.cert_der(), "root certificate")
        .is_ok_and(|root_cert| signed_by(&cert, &root_cert));
    if !signed {
        return Some(ReissueReason::NotSignedByRoot);
    }
    if now >= info.not_after || now < info.not_before {
        return Some(ReissueReason::Expired);
    }
    if info.subject_locality.as_deref() != Some(cluster) {
        return Some(ReissueReason::ClusterChanged);
    }
    if info.key_algorithm != Some(policy.algorithm) {
        return Some(ReissueReason::AlgorithmChanged);
    }

    let not_before = i128::from(info.not_before.as_second());
    let not_after = i128::from(info.not_after.as_second());
    let root_not_after = i128::from(root.info().not_after.as_second());
    let actual = not_after - not_before;
    let expected = i128::from(policy.lifetime.as_secs()) + i128::from(SKEW_SECONDS);
    let clamped_to_root = not_after >= root_not_after;
    if (actual - expected).abs() > i128::from(LIFETIME_TOLERANCE.as_secs())
        && !(clamped_to_root && actual < expected)
    {
        return Some(ReissueReason::LifetimeChanged);
    }

    let expected_chain = format!("{}{}", existing.ca_cert_pem, root.issuer_chain_pem());
    if existing.root_cert_pem != trust_bundle_pem || existing.cert_chain_pem != expected_chain {
        return Some(ReissueReason::TrustBundleChanged);
    }

    let renew_at_ns = (not_after - i128::from(policy.renew_before.as_secs())) * 1_000_000_000;
    if now.as_nanosecond() >= renew_at_ns && !clamped_to_root {
        return Some(ReissueReason::RenewalDue);
    }
    None
}

/// The certificates of a PEM bundle as a set of DER encodings (order and
/// text formatting aside); empty when it cannot be read.
pub fn certificate_set(bundle_pem: &str) -> std::collections::BTreeSet<Vec<u8>> {
    pem::certificates(bundle_pem, "bundle")
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Whether the intermediate in `bundle` chains to `root_pem`: its
/// `cert-chain.pem` ends with that root (a trust bundle that holds the root
/// is not enough: what a peer must trust is where the chain ends).
pub fn chains_to(bundle: &CacertsBundle, root_pem: &str) -> bool {
    let (Ok(chain), Ok(root)) = (
        pem::certificates(&bundle.cert_chain_pem, "cert-chain.pem"),
        pem::single_certificate(root_pem, "root"),
    ) else {
        return false;
    };
    chain.len() > 1 && chain.last() == Some(&root)
}

/// The root (PEM) `bundle`'s chain ends at, if it can be read.
pub fn chain_root_pem(bundle: &CacertsBundle) -> Option<String> {
    let chain = pem::certificates(&bundle.cert_chain_pem, "cert-chain.pem").ok()?;
    chain.last().map(|der| pem::encode(pem::CERTIFICATE, der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::KeyAlgorithm;
    use crate::pki::testutil::*;
    use crate::pki::{Error, inspect, issue_intermediate};

    struct Fixture {
        root: RootCa,
        policy: IntermediatePolicy,
        bundle: CacertsBundle,
    }

    impl Fixture {
        /// A P-256 root and a fresh `east` intermediate issued at [`t0`].
        fn new() -> Fixture {
            let root = root(KeyAlgorithm::EcdsaP256);
            let policy = policy(KeyAlgorithm::EcdsaP256);
            let bundle = issue_intermediate(&root, &root.cert_pem, "east", &policy, t0()).unwrap();
            Fixture {
                root,
                policy,
                bundle,
            }
        }

        fn reason_at(&self, bundle: &CacertsBundle, now: Timestamp) -> Option<ReissueReason> {
            reissue_reason(
                Some(bundle),
                &self.root,
                &self.root.cert_pem,
                "east",
                &self.policy,
                now,
            )
        }

        fn reason(&self, bundle: &CacertsBundle) -> Option<ReissueReason> {
            self.reason_at(bundle, t0())
        }

        fn reason_with(&self, policy: &IntermediatePolicy) -> Option<ReissueReason> {
            reissue_reason(
                Some(&self.bundle),
                &self.root,
                &self.root.cert_pem,
                "east",
                policy,
                t0(),
            )
        }
    }

    fn not_after(bundle: &CacertsBundle) -> Timestamp {
        inspect(&bundle.ca_cert_pem).unwrap().not_after
    }

    #[test]
    fn a_fresh_bundle_is_left_alone_until_the_renewal_window() {
        let f = Fixture::new();
        assert_eq!(f.reason(&f.bundle), None);
        // Right after issuance, a day later, and up to a second before the window.
        for seconds in [0, 1, 86_400, 300 * 86_400] {
            assert_eq!(
                f.reason_at(&f.bundle, at(t0(), seconds)),
                None,
                "+{seconds}s"
            );
        }
        // Even before "now" (within the 5-minute skew allowance).
        assert_eq!(f.reason_at(&f.bundle, at(t0(), -299)), None);
    }

    #[test]
    fn missing() {
        let f = Fixture::new();
        assert_eq!(
            reissue_reason(None, &f.root, &f.root.cert_pem, "east", &f.policy, t0()),
            Some(ReissueReason::Missing)
        );
    }

    #[test]
    fn malformed() {
        let f = Fixture::new();
        let with = |edit: &dyn Fn(&mut CacertsBundle)| {
            let mut bundle = f.bundle.clone();
            edit(&mut bundle);
            f.reason(&bundle)
        };
        type Edit = Box<dyn Fn(&mut CacertsBundle)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("empty cert", Box::new(|b| b.ca_cert_pem.clear())),
            (
                "garbage cert",
                Box::new(|b| b.ca_cert_pem = "garbage".into()),
            ),
            (
                "not DER",
                Box::new(|b| b.ca_cert_pem = pem::encode(pem::CERTIFICATE, b"junk")),
            ),
            (
                "two certs",
                Box::new(|b| b.ca_cert_pem = format!("{0}{0}", b.ca_cert_pem)),
            ),
            ("empty key", Box::new(|b| b.ca_key_pem.clear())),
            (
                "garbage key",
                Box::new(|b| b.ca_key_pem = pem::encode("PRIVATE KEY", b"junk")),
            ),
        ];
        for (name, edit) in cases {
            assert_eq!(with(&*edit), Some(ReissueReason::Malformed), "{name}");
        }

        // A valid, correctly keyed and signed certificate that is not a CA.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::LocalityName, "east");
        params.not_before =
            time::OffsetDateTime::from_unix_timestamp(t0().as_second() - 300).unwrap();
        params.not_after =
            time::OffsetDateTime::from_unix_timestamp(t0().as_second() + 365 * 86_400).unwrap();
        let root_key = rcgen::KeyPair::from_pem(&f.root.key_pem).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&f.root.cert_pem, root_key).unwrap();
        let leaf = params.signed_by(&key, &issuer).unwrap().pem();
        let bundle = CacertsBundle {
            cert_chain_pem: format!("{leaf}{}", f.root.cert_pem),
            ca_cert_pem: leaf,
            ca_key_pem: key.serialize_pem(),
            root_cert_pem: f.root.cert_pem.clone(),
        };
        assert_eq!(f.reason(&bundle), Some(ReissueReason::Malformed));
    }

    #[test]
    fn key_mismatch() {
        let f = Fixture::new();
        let other = issue_intermediate(&f.root, &f.root.cert_pem, "east", &f.policy, t0()).unwrap();
        let mut bundle = f.bundle.clone();
        bundle.ca_key_pem = other.ca_key_pem;
        assert_eq!(f.reason(&bundle), Some(ReissueReason::KeyMismatch));
        // A key of another algorithm does not match either.
        bundle.ca_key_pem = crate::pki::generate_private_key_pem(KeyAlgorithm::EcdsaP384).unwrap();
        assert_eq!(f.reason(&bundle), Some(ReissueReason::KeyMismatch));
    }

    #[test]
    fn not_signed_by_root_checks_the_signature_not_just_the_name() {
        let f = Fixture::new();
        // Same federation name, so the same subject DN, but a different key.
        let impostor = root(KeyAlgorithm::EcdsaP256);
        assert_eq!(impostor.info().subject, f.root.info().subject);
        let forged = issue_intermediate(&impostor, &f.root.cert_pem, "east", &f.policy, t0());
        // issue_intermediate refuses a bundle without its own root...
        assert_eq!(forged.unwrap_err(), Error::RootNotInTrustBundle);
        // ...so forge the bundle layout by hand around an impostor-signed intermediate.
        let both = format!("{}{}", f.root.cert_pem, impostor.cert_pem);
        let mut forged = issue_intermediate(&impostor, &both, "east", &f.policy, t0()).unwrap();
        forged.root_cert_pem = f.root.cert_pem.clone();
        forged.cert_chain_pem = format!("{}{}", forged.ca_cert_pem, f.root.cert_pem);
        assert_eq!(
            inspect(&forged.ca_cert_pem).unwrap().issuer,
            f.root.info().subject,
            "issuer names are equal"
        );
        assert_eq!(f.reason(&forged), Some(ReissueReason::NotSignedByRoot));

        // A different issuer name with a valid signature is rejected too.
        let other_fed =
            crate::pki::RootCa::generate("fed-b", KeyAlgorithm::EcdsaP256, days(3650), t0())
                .unwrap();
        let bundle =
            issue_intermediate(&other_fed, &other_fed.cert_pem, "east", &f.policy, t0()).unwrap();
        assert_eq!(f.reason(&bundle), Some(ReissueReason::NotSignedByRoot));
    }

    #[test]
    fn cluster_changed() {
        let f = Fixture::new();
        assert_eq!(
            reissue_reason(
                Some(&f.bundle),
                &f.root,
                &f.root.cert_pem,
                "west",
                &f.policy,
                t0()
            ),
            Some(ReissueReason::ClusterChanged)
        );
        assert_eq!(
            reissue_reason(
                Some(&f.bundle),
                &f.root,
                &f.root.cert_pem,
                "East",
                &f.policy,
                t0()
            ),
            Some(ReissueReason::ClusterChanged)
        );
    }

    #[test]
    fn algorithm_changed() {
        let f = Fixture::new();
        for algorithm in [
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Rsa4096,
        ] {
            let policy = IntermediatePolicy {
                algorithm,
                ..f.policy
            };
            assert_eq!(
                f.reason_with(&policy),
                Some(ReissueReason::AlgorithmChanged),
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn lifetime_changed_beyond_a_minute() {
        let f = Fixture::new();
        let with_lifetime = |lifetime: Duration| {
            f.reason_with(&IntermediatePolicy {
                lifetime,
                ..f.policy
            })
        };
        let lifetime = f.policy.lifetime;
        assert_eq!(with_lifetime(lifetime + Duration::from_secs(60)), None);
        assert_eq!(with_lifetime(lifetime - Duration::from_secs(60)), None);
        assert_eq!(
            with_lifetime(lifetime + Duration::from_secs(61)),
            Some(ReissueReason::LifetimeChanged)
        );
        assert_eq!(
            with_lifetime(lifetime - Duration::from_secs(61)),
            Some(ReissueReason::LifetimeChanged)
        );
        assert_eq!(
            with_lifetime(days(90)),
            Some(ReissueReason::LifetimeChanged)
        );
        assert_eq!(
            with_lifetime(days(730)),
            Some(ReissueReason::LifetimeChanged)
        );
    }

    #[test]
    fn lifetime_shortened_by_the_root_clamp_is_not_a_change() {
        // The root ends 100 days in, so a one-year intermediate is clamped to 100 days.
        let root = crate::pki::RootCa::generate("fed-a", KeyAlgorithm::EcdsaP256, days(100), t0())
            .unwrap();
        let policy = policy(KeyAlgorithm::EcdsaP256);
        let bundle = issue_intermediate(&root, &root.cert_pem, "east", &policy, t0()).unwrap();
        assert_eq!(not_after(&bundle), root.info().not_after);
        let reason = |policy: &IntermediatePolicy, now| {
            reissue_reason(Some(&bundle), &root, &root.cert_pem, "east", policy, now)
        };
        assert_eq!(reason(&policy, t0()), None);
        // A longer lifetime would be clamped the same way: still nothing to do.
        assert_eq!(
            reason(
                &IntermediatePolicy {
                    lifetime: days(3650),
                    ..policy
                },
                t0()
            ),
            None
        );
        // A lifetime shorter than the clamped span is a real change.
        assert_eq!(
            reason(
                &IntermediatePolicy {
                    lifetime: days(50),
                    renew_before: days(5),
                    ..policy
                },
                t0()
            ),
            Some(ReissueReason::LifetimeChanged)
        );
        // Renewal cannot outlive the root, so it is never "due" (75 days in is inside the
        // 30-day window); only expiry (with the root) forces a reissue.
        assert_eq!(reason(&policy, at(t0(), 75 * 86_400)), None);
        assert_eq!(
            reason(&policy, root.info().not_after),
            Some(ReissueReason::Expired)
        );
    }

    #[test]
    fn trust_bundle_changed() {
        let f = Fixture::new();
        let rotated = root(KeyAlgorithm::EcdsaP256);
        let new_bundle = format!("{}{}", f.root.cert_pem, rotated.cert_pem);
        // The desired trust bundle gained a root.
        assert_eq!(
            reissue_reason(
                Some(&f.bundle),
                &f.root,
                &new_bundle,
                "east",
                &f.policy,
                t0()
            ),
            Some(ReissueReason::TrustBundleChanged)
        );
        // root-cert.pem was edited, even just by whitespace.
        let mut bundle = f.bundle.clone();
        bundle.root_cert_pem.push('\n');
        assert_eq!(f.reason(&bundle), Some(ReissueReason::TrustBundleChanged));
        // cert-chain.pem lacks the root, holds a different root, or is reordered.
        let mut bundle = f.bundle.clone();
        bundle.cert_chain_pem = bundle.ca_cert_pem.clone();
        assert_eq!(f.reason(&bundle), Some(ReissueReason::TrustBundleChanged));
        bundle.cert_chain_pem = format!("{}{}", bundle.ca_cert_pem, rotated.cert_pem);
        assert_eq!(f.reason(&bundle), Some(ReissueReason::TrustBundleChanged));
        bundle.cert_chain_pem = format!("{}{}", f.root.cert_pem, bundle.ca_cert_pem);
        assert_eq!(f.reason(&bundle), Some(ReissueReason::TrustBundleChanged));
        // A bundle issued against the new trust bundle is fine with it.
        let reissued = issue_intermediate(&f.root, &new_bundle, "east", &f.policy, t0()).unwrap();
        assert_eq!(
            reissue_reason(
                Some(&reissued),
                &f.root,
                &new_bundle,
                "east",
                &f.policy,
                t0()
            ),
            None
        );
    }

    #[test]
    fn renewal_is_due_exactly_at_not_after_minus_renew_before() {
        let f = Fixture::new();
        let renew_at = not_after(&f.bundle)
            .checked_sub(jiff::SignedDuration::try_from(f.policy.renew_before).unwrap())
            .unwrap();
        assert_eq!(renew_at, at(t0(), (365 - 30) * 86_400));
        assert_eq!(f.reason_at(&f.bundle, at(renew_at, -1)), None);
        let just_before = renew_at
            .checked_sub(jiff::SignedDuration::from_nanos(1))
            .unwrap();
        assert_eq!(f.reason_at(&f.bundle, just_before), None);
        assert_eq!(
            f.reason_at(&f.bundle, renew_at),
            Some(ReissueReason::RenewalDue)
        );
        assert_eq!(
            f.reason_at(&f.bundle, at(renew_at, 1)),
            Some(ReissueReason::RenewalDue)
        );
        // A renewed bundle issued at that moment is fine again.
        let renewed =
            issue_intermediate(&f.root, &f.root.cert_pem, "east", &f.policy, renew_at).unwrap();
        assert_eq!(f.reason_at(&renewed, renew_at), None);
        assert_eq!(f.reason_at(&renewed, at(renew_at, 1)), None);
        // renew_before = 0 means renew at expiry, where Expired wins.
        let policy = IntermediatePolicy {
            renew_before: Duration::ZERO,
            ..f.policy
        };
        let late = at(not_after(&f.bundle), -1);
        assert_eq!(
            reissue_reason(
                Some(&f.bundle),
                &f.root,
                &f.root.cert_pem,
                "east",
                &policy,
                late
            ),
            None
        );
    }

    #[test]
    fn expired_at_and_after_not_after_and_before_not_before() {
        let f = Fixture::new();
        let end = not_after(&f.bundle);
        assert_eq!(
            f.reason_at(&f.bundle, at(end, -1)),
            Some(ReissueReason::RenewalDue)
        );
        assert_eq!(f.reason_at(&f.bundle, end), Some(ReissueReason::Expired));
        assert_eq!(
            f.reason_at(&f.bundle, at(end, 1)),
            Some(ReissueReason::Expired)
        );
        assert_eq!(f.reason_at(&f.bundle, at(t0(), -300)), None);
        assert_eq!(
            f.reason_at(&f.bundle, at(t0(), -301)),
            Some(ReissueReason::Expired)
        );
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        let f = Fixture::new();
        // Wrong cluster, algorithm and lifetime and an expired certificate: Expired first.
        let policy = IntermediatePolicy {
            algorithm: KeyAlgorithm::EcdsaP384,
            lifetime: days(10),
            renew_before: days(1),
        };
        let late = at(not_after(&f.bundle), 1);
        let reason = |cluster: &str, policy: &IntermediatePolicy, now| {
            reissue_reason(Some(&f.bundle), &f.root, "other", cluster, policy, now)
        };
        assert_eq!(reason("west", &policy, late), Some(ReissueReason::Expired));
        assert_eq!(
            reason("west", &policy, t0()),
            Some(ReissueReason::ClusterChanged)
        );
        assert_eq!(
            reason("east", &policy, t0()),
            Some(ReissueReason::AlgorithmChanged)
        );
        let policy = IntermediatePolicy {
            algorithm: KeyAlgorithm::EcdsaP256,
            ..policy
        };
        assert_eq!(
            reason("east", &policy, t0()),
            Some(ReissueReason::LifetimeChanged)
        );
        assert_eq!(
            reason("east", &f.policy, t0()),
            Some(ReissueReason::TrustBundleChanged)
        );
        let due = at(t0(), 360 * 86_400);
        assert_eq!(
            reason("east", &f.policy, due),
            Some(ReissueReason::TrustBundleChanged)
        );
        assert_eq!(f.reason_at(&f.bundle, due), Some(ReissueReason::RenewalDue));
    }

    #[test]
    fn rsa_intermediate_round_trip() {
        let root = root(KeyAlgorithm::EcdsaP256);
        let policy = policy(KeyAlgorithm::Rsa2048);
        let bundle = issue_intermediate(&root, &root.cert_pem, "east", &policy, t0()).unwrap();
        let reason = |policy: &IntermediatePolicy| {
            reissue_reason(Some(&bundle), &root, &root.cert_pem, "east", policy, t0())
        };
        assert_eq!(reason(&policy), None);
        assert_eq!(
            reason(&IntermediatePolicy {
                algorithm: KeyAlgorithm::Rsa4096,
                ..policy
            }),
            Some(ReissueReason::AlgorithmChanged)
        );
    }

    #[test]
    fn every_reason_has_a_distinct_description() {
        let all = [
            ReissueReason::Missing,
            ReissueReason::Malformed,
            ReissueReason::KeyMismatch,
            ReissueReason::NotSignedByRoot,
            ReissueReason::ClusterChanged,
            ReissueReason::AlgorithmChanged,
            ReissueReason::LifetimeChanged,
            ReissueReason::TrustBundleChanged,
            ReissueReason::RenewalDue,
            ReissueReason::Expired,
        ];
        let texts: std::collections::HashSet<&str> =
            all.iter().map(ReissueReason::describe).collect();
        assert_eq!(texts.len(), all.len());
        for reason in all {
            assert!(!reason.describe().is_empty());
            assert_eq!(reason.to_string(), reason.describe());
        }
    }
}
