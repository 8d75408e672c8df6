// verify: Go's crypto/x509 chain verification (what Kubernetes and etcd use), for the tests.
//
//	GO111MODULE=off go run verify.go -roots ROOTS.pem [-intermediates CHAIN.pem] [-eku server|client|...]
//	    [-host NAME] [-at RFC3339] CERT.pem...
//
// Verifies each CERT.pem and prints "ok NAME" or "fail NAME: reason" per certificate; exits 1 if any
// failed. Standard library only.
package main

import (
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"time"
)

var ekus = map[string]x509.ExtKeyUsage{
	"any":              x509.ExtKeyUsageAny,
	"server auth":      x509.ExtKeyUsageServerAuth,
	"client auth":      x509.ExtKeyUsageClientAuth,
	"code signing":     x509.ExtKeyUsageCodeSigning,
	"email protection": x509.ExtKeyUsageEmailProtection,
	"ipsec end system": x509.ExtKeyUsageIPSECEndSystem,
	"ipsec tunnel":     x509.ExtKeyUsageIPSECTunnel,
	"ipsec user":       x509.ExtKeyUsageIPSECUser,
	"timestamping":     x509.ExtKeyUsageTimeStamping,
	"ocsp signing":     x509.ExtKeyUsageOCSPSigning,
}

func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
		out = append(out, cert)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no certificate", path)
	}
	return out, nil
}

func pool(paths []string) (*x509.CertPool, error) {
	p := x509.NewCertPool()
	for _, path := range paths {
		certs, err := readCerts(path)
		if err != nil {
			return nil, err
		}
		for _, c := range certs {
			p.AddCert(c)
		}
	}
	return p, nil
}

type list []string

func (l *list) String() string     { return fmt.Sprint(*l) }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var roots, intermediates list
	flag.Var(&roots, "roots", "trusted root certificates (PEM; repeatable)")
	flag.Var(&intermediates, "intermediates", "intermediate certificates (PEM; repeatable)")
	eku := flag.String("eku", "any", "the extended key usage the chain must allow")
	host := flag.String("host", "", "the host name or IP address the certificate must be valid for")
	at := flag.String("at", "", "verify as of this time (RFC 3339; default now)")
	flag.Parse()

	usage, ok := ekus[*eku]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown -eku %q\n", *eku)
		os.Exit(2)
	}
	rootPool, err := pool(roots)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	interPool, err := pool(intermediates)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	opts := x509.VerifyOptions{Roots: rootPool, Intermediates: interPool, DNSName: *host,
		KeyUsages: []x509.ExtKeyUsage{usage}}
	if *at != "" {
		if opts.CurrentTime, err = time.Parse(time.RFC3339, *at); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	failed := false
	for _, path := range flag.Args() {
		certs, err := readCerts(path)
		if err == nil {
			_, err = certs[0].Verify(opts)
		}
		if err != nil {
			fmt.Printf("fail %s: %v\n", path, err)
			failed = true
		} else {
			fmt.Printf("ok %s\n", path)
		}
	}
	if failed {
		os.Exit(1)
	}
}
