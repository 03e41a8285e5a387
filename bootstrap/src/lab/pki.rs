//! The lab cluster's keys and certificates, made with `openssl`: a CA, the
//! API server's serving certificate (valid for every address the API server
//! is reached at), the service-account signing key, and random tokens.
//!
//! ECDSA P-256 everywhere: generating it is instant, where RSA 2048 takes
//! a noticeable part of `lab up` on a slow machine.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::command::{CommandError, HostCommand};

/// The files [`generate`] writes.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// API server certificate (PEM), signed by the CA.
    pub apiserver_cert: PathBuf,
    /// Its key.
    pub apiserver_key: PathBuf,
    /// Service-account signing key (private).
    pub sa_key: PathBuf,
    /// Service-account verification key (public).
    pub sa_pub: PathBuf,
}

/// Writes a fresh PKI into `dir` for an API server reached at `ips`.
pub fn generate(dir: &Path, ips: &[IpAddr]) -> Result<Pki, CommandError> {
    let p = |name: &str| dir.join(name);
    let pki = Pki {
        ca_cert: p("ca.crt"),
        apiserver_cert: p("apiserver.crt"),
        apiserver_key: p("apiserver.key"),
        sa_key: p("sa.key"),
        sa_pub: p("sa.pub"),
    };
    let s = |path: &Path| path.display().to_string();
    let ca_key = p("ca.key");
    for key in [&ca_key, &pki.apiserver_key, &pki.sa_key] {
        HostCommand::new(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &s(key),
            ],
        )
        .run()?;
    }
    HostCommand::new(
        "openssl",
        &[
            "pkey",
            "-in",
            &s(&pki.sa_key),
            "-pubout",
            "-out",
            &s(&pki.sa_pub),
        ],
    )
    .run()?;
    HostCommand::new(
        "openssl",
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &s(&ca_key),
            "-sha256",
            "-days",
            "30",
            "-subj",
            "/CN=tailroute-lab-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &s(&pki.ca_cert),
        ],
    )
    .run()?;
    let csr = p("apiserver.csr");
    HostCommand::new(
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            &s(&pki.apiserver_key),
            "-subj",
            "/CN=kube-apiserver",
            "-out",
            &s(&csr),
        ],
    )
    .run()?;
    let ext = p("apiserver.ext");
    std::fs::write(&ext, serving_extensions(ips)).map_err(|e| CommandError::Spawn {
        command: format!("write {}", ext.display()),
        program: "openssl".into(),
        package: "openssl",
        source: e,
    })?;
    HostCommand::new(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&pki.ca_cert),
            "-CAkey",
            &s(&ca_key),
            "-CAcreateserial",
            "-sha256",
            "-days",
            "30",
            "-extfile",
            &s(&ext),
            "-out",
            &s(&pki.apiserver_cert),
        ],
    )
    .run()?;
    Ok(pki)
}

/// The X.509 v3 extensions of the serving certificate.
fn serving_extensions(ips: &[IpAddr]) -> String {
    let mut san = vec![
        "DNS:kubernetes".to_owned(),
        "DNS:kubernetes.default".to_owned(),
        "DNS:kubernetes.default.svc".to_owned(),
        "DNS:localhost".to_owned(),
    ];
    san.extend(ips.iter().map(|ip| format!("IP:{ip}")));
    format!(
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName={}\n",
        san.join(",")
    )
}

/// A random token: 32 hex digits from the kernel's CSPRNG.
pub fn random_token() -> std::io::Result<String> {
    random_hex(16)
}

/// `bytes` random bytes from the kernel's CSPRNG, as lowercase hex.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_certificate_names_every_address() {
        let ext = serving_extensions(&["198.18.0.2".parse().unwrap(), "::1".parse().unwrap()]);
        assert!(ext.contains("IP:198.18.0.2"), "{ext}");
        assert!(ext.contains("IP:::1"), "{ext}");
        assert!(ext.contains("CA:FALSE"), "{ext}");
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
