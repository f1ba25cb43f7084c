package node

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"
)

// The admin listener (issue 13): with Config.AdminListen the admin and
// cluster-admin APIs are served there, and no longer on the public
// listener. With AdminTLSCertFile/AdminTLSKeyFile it speaks TLS; with
// AdminClientCAFile as well, every client must present a certificate that
// CA signed (mutual TLS), in addition to its admin token or credential.
// Without TLS it is plain HTTP: bind it to loopback or a private network.

func validateAdminListen(c Config) error {
	if c.AdminListen == "" {
		if c.AdminTLSCertFile != "" || c.AdminTLSKeyFile != "" || c.AdminClientCAFile != "" {
			return errors.New("node: the admin TLS files need an admin listener (AdminListen, --admin-listen)")
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
		return fmt.Errorf("node: admin listen address %q: %w", c.AdminListen, err)
	}
	if (c.AdminTLSCertFile == "") != (c.AdminTLSKeyFile == "") {
		return errors.New("node: the admin listener's certificate and key come together")
	}
	if c.AdminClientCAFile != "" && c.AdminTLSCertFile == "" {
		return errors.New("node: client certificates on the admin listener need its own certificate and key (TLS)")
	}
	return nil
}

// listenAdmin binds the admin listener (nil when AdminListen is empty).
func (n *Node) listenAdmin() (net.Listener, error) {
	c := n.cfg
	if err := validateAdminListen(c); err != nil || c.AdminListen == "" {
		return nil, err
	}
	var tc *tls.Config
	if c.AdminTLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.AdminTLSCertFile, c.AdminTLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("node: admin listener certificate: %w", err)
		}
		tc = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
		if c.AdminClientCAFile != "" {
			pem, err := os.ReadFile(c.AdminClientCAFile)
			if err != nil {
				return nil, fmt.Errorf("node: admin client CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("node: admin client CA %s: no PEM certificate", c.AdminClientCAFile)
			}
			tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
		}
	}
	ln, err := net.Listen("tcp", c.AdminListen)
	if err != nil {
		return nil, err
	}
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	return ln, nil
}

func (n *Node) adminServer(h http.Handler) *http.Server {
	s := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}
	s.Protocols = new(http.Protocols)
	s.Protocols.SetHTTP1(true)
	s.Protocols.SetHTTP2(true)
	s.Protocols.SetUnencryptedHTTP2(true)
	return s
}

// AdminAddr is the admin listener's address, "" without one.
func (n *Node) AdminAddr() string {
	if n.adminLn == nil {
		return ""
	}
	return n.adminLn.Addr().String()
}
