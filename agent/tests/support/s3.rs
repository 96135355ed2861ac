//! moto's S3 server for tests (functional S3 with Object Lock; it does not
//! check signatures). Inspected and seeded through boto3, a client that is
//! not ours. Killed on drop.

use std::process::{Child, Command, Stdio};

/// A running moto server.
pub struct Moto {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Access key id the helpers sign with.
    pub key_id: String,
    /// Secret access key the helpers sign with.
    pub secret: String,
}

impl Moto {
    /// Start moto (no authentication) and wait until it answers.
    pub fn start() -> Moto {
        Self::spawn(None)
    }

    /// Start moto with authentication on: after an IAM user with an
    /// allow-all policy is created, every request must carry a valid SigV4
    /// signature of that user's key (moto checks signatures in this mode).
    pub fn start_with_auth() -> Moto {
        let mut m = Self::spawn(Some(3));
        let out = m.py(
            "iam = boto3.client('iam', endpoint_url=s3.meta.endpoint_url, region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='x')\n\
             iam.create_user(UserName='agent')\n\
             k = iam.create_access_key(UserName='agent')['AccessKey']\n\
             iam.put_user_policy(UserName='agent', PolicyName='all', PolicyDocument=json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': '*', 'Resource': '*'}]}))\n\
             print(k['AccessKeyId'], k['SecretAccessKey'])",
        );
        let mut it = out.split_whitespace();
        m.key_id = it.next().unwrap().to_owned();
        m.secret = it.next().unwrap().to_owned();
        m
    }

    fn spawn(unauthenticated_actions: Option<u32>) -> Moto {
        let bin = super::require("moto_server");
        let port = super::free_port();
        let mut cmd = Command::new(bin);
        if let Some(n) = unauthenticated_actions {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let m = Moto {
            child,
            port,
            key_id: "test".into(),
            secret: "test".into(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start in 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        m
    }

    /// Endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Run a Python snippet with `s3` bound to a boto3 client of this server; returns stdout.
    pub fn py(&self, code: &str) -> String {
        let script = format!(
            "import boto3, json, sys, datetime, hashlib, base64\n\
             s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='{}', aws_secret_access_key='{}')\n{code}\n",
            self.endpoint(),
            self.key_id,
            self.secret
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(out.status.success(), "python: {}", super::text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Create a bucket, with Object Lock enabled when `locked`.
    pub fn bucket(&self, name: &str, locked: bool) {
        self.py(&format!(
            "s3.create_bucket(Bucket='{name}', ObjectLockEnabledForBucket={})",
            if locked { "True" } else { "False" }
        ));
    }

    /// Every key in a bucket.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.py(&format!(
            "r = s3.list_objects_v2(Bucket='{bucket}')\nfor o in r.get('Contents', []): print(o['Key'])"
        ))
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// An object's bytes.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let hexed = self.py(&format!(
            "sys.stdout.write(s3.get_object(Bucket='{bucket}', Key='{key}')['Body'].read().hex())"
        ));
        hex::decode(hexed.trim()).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal hex decoding for test helpers.
mod hex {
    pub fn decode(s: &str) -> Result<Vec<u8>, String> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
            .collect()
    }
}
