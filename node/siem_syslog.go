package node

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// SIEM export over syslog (issue 13): every exported event as one RFC 5424
// message over TCP with TLS (RFC 5425: octet-counted framing), to
// Config.SIEMSyslog, with its own position in <data-dir>/siem-syslog-
// position. The message is the same JSON line as --siem-file, with
//
//	PRI       facility authpriv (10) and a severity from the event's
//	          (Informational 6, Low 5, Medium 4, High 3)
//	APP-NAME  tally; PROCID the process id; MSGID the OCSF class_uid
//	HOSTNAME  the node id
//
// A batch is written again after a failed write or a reconnect (at least
// once; de-duplicate on metadata.uid). TCP has no application-level
// acknowledgement: a message the server had not read when it went away may
// be lost with the connection. Config.SIEMSyslogProtocol "relp" closes that
// gap: the same messages over RELP (siem_relp.go), each acknowledged by
// the collector before the position moves past it.
//
// Both transports verify the server against Config.SIEMSyslogCAFile (or the
// system roots) and, with Config.SIEMSyslogCertFile/KeyFile, present a
// client certificate (mutual TLS).

const siemSyslogPositionFile = "siem-syslog-position"

// syslogFacility is authpriv: security and authorization messages.
const syslogFacility = 10

// siemSink is a transport of the syslog exporter: write delivers a batch
// (nil: every event of it was handed over, or for RELP acknowledged),
// close ends the connection.
type siemSink interface {
	write(evs []SIEMEvent, lines [][]byte) error
	close()
}

type syslogSink struct {
	addr string
	tls  *tls.Config
	host string
	pid  string
	conn net.Conn
}

// validateSIEMSyslog checks the syslog settings that need no file.
func (c Config) validateSIEMSyslog() error {
	switch c.SIEMSyslogProtocol {
	case "", "tls", "relp":
	default:
		return fmt.Errorf("node: --siem-syslog-protocol %q: want tls or relp", c.SIEMSyslogProtocol)
	}
	if (c.SIEMSyslogCertFile == "") != (c.SIEMSyslogKeyFile == "") {
		return errors.New("node: --siem-syslog-cert and --siem-syslog-key go together")
	}
	if c.SIEMSyslog != "" {
		if _, _, err := net.SplitHostPort(c.SIEMSyslog); err != nil {
			return fmt.Errorf("node: --siem-syslog %q: %w", c.SIEMSyslog, err)
		}
	}
	return nil
}

// syslogTLSConfig is the client TLS configuration of the syslog
// connection: the server verified against SIEMSyslogCAFile (or the system
// roots) under the host name of SIEMSyslog, the client certificate of
// SIEMSyslogCertFile/KeyFile presented when set.
func syslogTLSConfig(cfg Config) (*tls.Config, error) {
	if err := cfg.validateSIEMSyslog(); err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(cfg.SIEMSyslog)
	tc := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if cfg.SIEMSyslogCAFile != "" {
		pem, err := os.ReadFile(cfg.SIEMSyslogCAFile)
		if err != nil {
			return nil, fmt.Errorf("node: --siem-syslog-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("node: --siem-syslog-ca %s: no PEM certificate", cfg.SIEMSyslogCAFile)
		}
		tc.RootCAs = pool
	}
	if cfg.SIEMSyslogCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.SIEMSyslogCertFile, cfg.SIEMSyslogKeyFile)
		if err != nil {
			return nil, fmt.Errorf("node: --siem-syslog-cert/--siem-syslog-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// newSyslogSink is the transport Config.SIEMSyslogProtocol names.
func newSyslogSink(cfg Config) (siemSink, error) {
	tc, err := syslogTLSConfig(cfg)
	if err != nil {
		return nil, err
	}
	hostname := cfg.NodeID
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	s := &syslogSink{addr: cfg.SIEMSyslog, tls: tc, host: syslogField(hostname, 255), pid: strconv.Itoa(os.Getpid())}
	if cfg.SIEMSyslogProtocol == "relp" {
		return newRELPSink(s), nil
	}
	return s, nil
}

// syslogField is s as an RFC 5424 header field: printable US-ASCII, at
// most n characters, "-" when empty.
func syslogField(s string, n int) string {
	b := []byte(s)
	out := b[:0]
	for _, c := range b {
		if c > 32 && c < 127 {
			out = append(out, c)
		}
	}
	if len(out) > n {
		out = out[:n]
	}
	if len(out) == 0 {
		return "-"
	}
	return string(out)
}

func syslogSeverity(ocsf int) int {
	switch {
	case ocsf >= 5:
		return 2 // critical
	case ocsf == 4:
		return 3 // error
	case ocsf == 3:
		return 4 // warning
	case ocsf == 2:
		return 5 // notice
	}
	return 6 // informational
}

// message is the RFC 5424 message of e (JSON line msg).
func (s *syslogSink) message(e SIEMEvent, msg []byte) []byte {
	ts := time.UnixMilli(e.Time).UTC().Format("2006-01-02T15:04:05.000000Z07:00")
	head := fmt.Sprintf("<%d>1 %s %s tally %s %d - ", syslogFacility*8+syslogSeverity(e.SeverityID), ts, s.host, s.pid, e.ClassUID)
	return append([]byte(head), msg...)
}

// frame appends the octet-counted (RFC 5425) message of e.
func (s *syslogSink) frame(buf *bytes.Buffer, e SIEMEvent, msg []byte) {
	m := s.message(e, msg)
	fmt.Fprintf(buf, "%d ", len(m))
	buf.Write(m)
}

func (s *syslogSink) write(evs []SIEMEvent, lines [][]byte) error {
	var buf bytes.Buffer
	for i, e := range evs {
		s.frame(&buf, e, lines[i])
	}
	if s.conn == nil {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.addr, s.tls)
		if err != nil {
			return fmt.Errorf("syslog %s: %w", s.addr, err)
		}
		s.conn = c
	}
	s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.conn.Write(buf.Bytes()); err != nil {
		s.conn.Close()
		s.conn = nil
		return fmt.Errorf("syslog %s: %w", s.addr, err)
	}
	return nil
}

func (s *syslogSink) close() {
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
}
