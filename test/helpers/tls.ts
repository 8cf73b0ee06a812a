// A throw-away self-signed certificate for loopback TLS: valid for
// 127.0.0.1 and localhost, so that it serves as its own CA (`--backend-ca`,
// or a client's `ca`) and as a listener's certificate (`--tls-cert`).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Certificate {
  certFile: string;
  keyFile: string;
  cert: string;
  key: string;
}

export function selfSigned(cn: string): Certificate {
  const dir = mkdtempSync(join(tmpdir(), 'sp-cert-'));
  const certFile = join(dir, `${cn}.pem`);
  const keyFile = join(dir, `${cn}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', `/CN=${cn}`,
    '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', keyFile, '-out', certFile], { stdio: 'ignore' });
  return { certFile, keyFile, cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') };
}
