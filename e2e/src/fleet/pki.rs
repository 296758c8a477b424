//! Per-cluster PKI: a serving CA and the API server's serving certificate, a
//! client CA with one client certificate per identity, and the service
//! account signing key. All keys are ECDSA P-256 (fast to generate, accepted
//! everywhere Kubernetes takes a key, ES256 for service account tokens).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// A PEM certificate and its PEM (PKCS#8) key.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything one cluster needs.
pub struct ClusterPki {
    /// CA that signed the API server's serving certificate.
    pub server_ca: CertKey,
    /// The API server's serving certificate.
    pub serving: CertKey,
    /// CA the API server trusts for client certificates (`--client-ca-file`).
    pub client_ca: CertKey,
    /// CN=admin, O=system:masters.
    pub admin: CertKey,
    /// CN=system:kube-controller-manager.
    pub controller_manager: CertKey,
    /// CN=system:kube-scheduler.
    pub scheduler: CertKey,
    /// CN=kwok, O=system:masters (kwok drives many nodes, so it cannot use
    /// the per-node identities the Node authorizer expects).
    pub kwok: CertKey,
    /// Service account token signing key (PKCS#8 PEM, ECDSA P-256).
    pub service_account_key_pem: String,
    /// Its public half (SPKI PEM): the API server's `--service-account-key-file`
    /// does not take PKCS#8 private keys.
    pub service_account_pub_pem: String,
}

fn dn(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

fn new_ca(cn: &str) -> Result<(CertifiedIssuer<'static, KeyPair>, CertKey)> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn, &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let key_pem = key.serialize_pem();
    let issuer = CertifiedIssuer::self_signed(params, key)?;
    let ck = CertKey {
        cert_pem: issuer.pem(),
        key_pem,
    };
    Ok((issuer, ck))
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    orgs: &[&str],
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertKey> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn, orgs);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl ClusterPki {
    /// Generates a fresh PKI for the cluster called `name`.
    pub fn generate(name: &str) -> Result<ClusterPki> {
        let (server_issuer, server_ca) = new_ca(&format!("{name}-server-ca"))?;
        let (client_issuer, client_ca) = new_ca(&format!("{name}-client-ca"))?;
        let mut sans = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))),
        ];
        for dns in [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            sans.push(SanType::DnsName(dns.try_into()?));
        }
        let serving = leaf(
            &server_issuer,
            "kube-apiserver",
            &[],
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let client = |cn: &str, orgs: &[&str]| {
            leaf(
                &client_issuer,
                cn,
                orgs,
                vec![],
                ExtendedKeyUsagePurpose::ClientAuth,
            )
        };
        let sa = KeyPair::generate()?;
        Ok(ClusterPki {
            admin: client("admin", &["system:masters"])?,
            controller_manager: client("system:kube-controller-manager", &[])?,
            scheduler: client("system:kube-scheduler", &[])?,
            kwok: client("kwok", &["system:masters"])?,
            service_account_key_pem: sa.serialize_pem(),
            service_account_pub_pem: sa.public_key_pem(),
            server_ca,
            serving,
            client_ca,
        })
    }
}
