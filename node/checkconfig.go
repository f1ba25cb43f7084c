package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tallyauth/tally/raft"
)

// CheckConfig validates cfg as New would, without starting anything or
// writing a file: the settings (Validate), the key-encryption key and admin
// credential files (present, readable, well-formed), the node certificates
// in TLSDir (readable, chaining to the CA, naming this node) and the data
// directory (a directory, or creatable under an existing parent). It is
// what "tally serve --check-config" runs.
func CheckConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := validateMetricsListen(cfg); err != nil {
		return err
	}
	if err := validateAdminListen(cfg); err != nil {
		return err
	}
	if cfg.SIEMSyslog != "" {
		if _, err := syslogTLSConfig(cfg); err != nil {
			return err
		}
	}
	if len(cfg.KEK) > 0 || cfg.KEKFile != "" {
		if _, err := loadKEK(cfg); err != nil {
			return err
		}
	}
	if cfg.AdminToken == "" && cfg.AdminTokenFile != "" {
		if _, err := loadAdminToken(cfg); err != nil {
			return err
		}
	}
	if cfg.TLS == nil && cfg.TLSDir != "" {
		t, err := raft.LoadNodeTLSDir(cfg.TLSDir)
		if err != nil {
			return fmt.Errorf("node: tls dir %s: %w", cfg.TLSDir, err)
		}
		if t.NodeID() != cfg.NodeID {
			return fmt.Errorf("node: tls dir %s: the certificate names node %q, this node is %q", cfg.TLSDir, t.NodeID(), cfg.NodeID)
		}
	}
	return checkDataDir(cfg.DataDir)
}

// checkDataDir accepts an existing directory, or a missing one whose
// nearest existing ancestor is a directory.
func checkDataDir(dir string) error {
	p := filepath.Clean(dir)
	for {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("node: data dir %s: %s is not a directory", dir, p)
			}
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("node: data dir %s: %w", dir, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("node: data dir %s: no existing parent directory", dir)
		}
		p = parent
	}
}
