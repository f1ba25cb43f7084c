package revocation

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Set is one tenant's revocation state as a resource server needs it:
// revoked token ids (kept until the token would have expired anyway),
// disabled clients, locked subjects and revoked refresh-token families, and
// the stream sequence it reflects. Safe for concurrent use.
type Set struct {
	mu       sync.RWMutex
	seq      uint64
	tokens   map[string]int64 // jti → exp (unix seconds)
	clients  map[string]bool  // disabled client ids
	subjects map[string]bool  // locked subjects
	families map[string]bool  // revoked refresh-token families
}

// NewSet returns an empty set at sequence 0.
func NewSet() *Set {
	return &Set{tokens: map[string]int64{}, clients: map[string]bool{}, subjects: map[string]bool{}, families: map[string]bool{}}
}

// Revoked reports whether the token jti is revoked.
func (s *Set) Revoked(jti string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.tokens[jti]
	return ok
}

// ClientDisabled reports whether the client is disabled.
func (s *Set) ClientDisabled(id string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.clients[id]
}

// SubjectLocked reports whether the subject (user) is locked.
func (s *Set) SubjectLocked(sub string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return sub != "" && s.subjects[sub]
}

// Sequence is the stream sequence of the last event reflected.
func (s *Set) Sequence() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.seq
}

// Len is the number of revoked tokens held.
func (s *Set) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.tokens)
}

// apply records one event at stream sequence seq. It reports whether the
// event was new (seq above the set's); an event at or below the set's
// sequence is a replay and changes nothing.
func (s *Set) apply(seq uint64, typ string, d EventDetails) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq != 0 && seq <= s.seq {
		return false
	}
	if seq != 0 {
		s.seq = seq
	}
	switch typ {
	case EventTokenRevoked:
		if d.JTI != "" {
			s.tokens[d.JTI] = d.ExpiresAt
		}
	case EventClientDisabled:
		s.clients[d.ClientID] = true
	case EventClientEnabled:
		delete(s.clients, d.ClientID)
	case EventUserLocked:
		s.subjects[d.Subject] = true
	case EventFamilyRevoked, EventReuseDetected:
		if d.FamilyID != "" {
			s.families[d.FamilyID] = true
		}
	}
	return true
}

// advance moves the sequence past an event that changes nothing here.
func (s *Set) advance(seq uint64) {
	s.mu.Lock()
	if seq > s.seq {
		s.seq = seq
	}
	s.mu.Unlock()
}

// replace swaps the whole state (after a resync).
func (s *Set) replace(o *Set) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq, s.tokens, s.clients, s.subjects, s.families = o.seq, o.tokens, o.clients, o.subjects, o.families
}

// prune drops revocations of tokens expired before now (minus leeway).
func (s *Set) prune(now time.Time) {
	cut := now.Unix()
	s.mu.Lock()
	defer s.mu.Unlock()
	for jti, exp := range s.tokens {
		if exp != 0 && exp < cut {
			delete(s.tokens, jti)
		}
	}
}

// setFile is the saved form of a Set (PositionFile).
type setFile struct {
	Version  int              `json:"version"`
	Tenant   string           `json:"tenant"`
	Sequence uint64           `json:"sequence"`
	Tokens   map[string]int64 `json:"tokens"`
	Clients  []string         `json:"disabled_clients,omitempty"`
	Subjects []string         `json:"locked_subjects,omitempty"`
	Families []string         `json:"revoked_families,omitempty"`
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func (s *Set) save(path, tenant string) error {
	s.mu.RLock()
	f := setFile{Version: 1, Tenant: tenant, Sequence: s.seq, Tokens: s.tokens,
		Clients: keys(s.clients), Subjects: keys(s.subjects), Families: keys(s.families)}
	b, err := json.Marshal(f)
	s.mu.RUnlock()
	if err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// loadSet reads a saved set; (nil, nil) if the file does not exist.
func loadSet(path, tenant string) (*Set, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var f setFile
	if err := json.Unmarshal(b, &f); err != nil || f.Version != 1 {
		return nil, fmt.Errorf("revocation: position file %s is unreadable (delete it to resync): %v", path, err)
	}
	if f.Tenant != tenant {
		return nil, fmt.Errorf("revocation: position file %s is for tenant %q", path, f.Tenant)
	}
	s := NewSet()
	s.seq = f.Sequence
	if f.Tokens != nil {
		s.tokens = f.Tokens
	}
	for _, c := range f.Clients {
		s.clients[c] = true
	}
	for _, c := range f.Subjects {
		s.subjects[c] = true
	}
	for _, c := range f.Families {
		s.families[c] = true
	}
	return s, nil
}
