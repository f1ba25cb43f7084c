package node

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/tallyauth/tally/issuance"
	"github.com/tallyauth/tally/raft"
)

const (
	kekFileName        = "kek"
	adminTokenFileName = "admin-token"
)

// loadKEK returns the key-encryption key: from the config, from KEKFile, or
// (dev mode only) from <DataDir>/kek, generated on first start with mode
// 0600. The KEK never enters the Raft log.
func loadKEK(cfg Config) ([]byte, error) {
	if len(cfg.KEK) > 0 {
		return checkKEK(cfg.KEK, "configured key")
	}
	path := cfg.KEKFile
	if path == "" {
		if !cfg.Dev {
			return nil, errors.New("node: no key-encryption key configured")
		}
		path = filepath.Join(cfg.DataDir, kekFileName)
		if err := createSecretFile(path, 32); err != nil {
			return nil, err
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("node: key-encryption key: %w", err)
	}
	return DecodeKEK(raw, path)
}

// DecodeKEK accepts a 32-byte key as raw bytes or as standard or URL-safe
// base64 text (surrounding white space ignored).
func DecodeKEK(raw []byte, source string) ([]byte, error) {
	if len(raw) == 32 {
		return checkKEK(raw, source)
	}
	text := strings.TrimSpace(string(raw))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(text); err == nil {
			return checkKEK(b, source)
		}
	}
	return nil, fmt.Errorf("node: key-encryption key in %s: want 32 bytes, raw or base64", source)
}

func checkKEK(b []byte, source string) ([]byte, error) {
	if len(b) != 32 {
		return nil, fmt.Errorf("node: key-encryption key in %s has %d bytes, want 32", source, len(b))
	}
	return bytes.Clone(b), nil
}

// loadAdminToken returns the admin credential: from the config, from
// AdminTokenFile, or (dev mode only) from <DataDir>/admin-token, generated on
// first start with mode 0600.
func loadAdminToken(cfg Config) (string, error) {
	if cfg.AdminToken != "" {
		return cfg.AdminToken, nil
	}
	path := cfg.AdminTokenFile
	if path == "" {
		if !cfg.Dev {
			return "", errors.New("node: no admin credential configured")
		}
		path = filepath.Join(cfg.DataDir, adminTokenFileName)
		if err := createSecretFile(path, 32); err != nil {
			return "", err
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("node: admin credential: %w", err)
	}
	tok := strings.TrimSpace(string(raw))
	if len(tok) < 16 {
		return "", fmt.Errorf("node: admin credential in %s is shorter than 16 characters", path)
	}
	return tok, nil
}

// createSecretFile writes n random bytes as base64url text to path with mode
// 0600, unless the file exists already.
func createSecretFile(path string, n int) error {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	_, werr := f.WriteString(base64.RawURLEncoding.EncodeToString(b) + "\n")
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(path)
		return fmt.Errorf("node: writing %s: %w", path, err)
	}
	return nil
}

// adminAuth checks admin credentials in constant time: the static admin
// token, and the named credentials of the replicated state (admincred.go).
type adminAuth struct {
	digest [32]byte
	named  *namedCreds // nil: the static token only
}

func newAdminAuth(token string) adminAuth { return adminAuth{digest: sha256.Sum256([]byte(token))} }

// adminAuthFor accepts the static token and the named credentials.
func (n *Node) adminAuthFor(token string, kek *issuance.KEK) adminAuth {
	a := newAdminAuth(token)
	a.named = &namedCreds{fsm: n.raft.FSM(), kek: kek, now: n.now}
	return a
}

// check reports whether an Authorization header value carries the static
// admin token or a named credential of the admin role, as a Bearer token.
func (a adminAuth) check(header string) bool { return a.checkRoles(header, raft.RoleAdmin) }
