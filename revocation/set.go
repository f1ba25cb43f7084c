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
// revoked token ids (kept until the token would have expired anyway, plus
// the verifiers' leeway), disabled clients, locked subjects and revoked
// refresh-token families, the stream sequence and stream identity it
// reflects, and the Raft index of its baseline. Safe for concurrent use.
type Set struct {
	mu sync.RWMutex
	// seq is the stream sequence of the last event reflected; stream the
	// identity (creation time, unix nanoseconds) of that stream, 0 if
	// unknown.
	seq    uint64
	stream int64
	// floor is the Raft index the last resync reflected: a state change
	// at or below it is already in the set.
	floor    uint64
	tokens   map[string]int64 // jti → exp (unix seconds)
	clients  map[string]toggle
	subjects map[string]toggle
	families map[string]bool // revoked refresh-token families
	// cutoffs: a user enabled again after a lock; its tokens with an iat
	// at or before the value (unix seconds) stay invalid.
	cutoffs map[string]int64
	// clientCutoffs: a deleted client; its tokens with an iat at or
	// before the value (unix seconds) are invalid.
	clientCutoffs map[string]int64
	// tenantCutoff: the tenant was deleted; every token with an iat at or
	// before it (unix seconds) is invalid. 0: not deleted.
	tenantCutoff int64
}

// toggle is the state of a client (disabled) or user (locked) and the
// Raft index of the change that set it, so that a replayed older event
// cannot undo a newer change.
type toggle struct {
	on    bool
	index uint64
}

// NewSet returns an empty set at sequence 0.
func NewSet() *Set {
	return &Set{tokens: map[string]int64{}, clients: map[string]toggle{}, subjects: map[string]toggle{}, families: map[string]bool{},
		cutoffs: map[string]int64{}, clientCutoffs: map[string]int64{}}
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
	return s.clients[id].on
}

// SubjectLocked reports whether the subject (user) is disabled or locked.
func (s *Set) SubjectLocked(sub string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return sub != "" && s.subjects[sub].on
}

// IssuedBeforeLock reports whether a token of subject issued at iat
// (unix seconds) predates the subject's last lock.
func (s *Set) IssuedBeforeLock(sub string, iat int64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.cutoffs[sub]
	return ok && sub != "" && iat <= c
}

// IssuedBeforeClientDeleted reports whether a token of client issued at
// iat (unix seconds) predates the client's deletion.
func (s *Set) IssuedBeforeClientDeleted(client string, iat int64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.clientCutoffs[client]
	return ok && client != "" && iat <= c
}

// IssuedBeforeTenantDeleted reports whether a token issued at iat (unix
// seconds) predates the deletion of the set's tenant (EventTenantDeleted).
func (s *Set) IssuedBeforeTenantDeleted(iat int64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.tenantCutoff != 0 && iat <= s.tenantCutoff
}

// TenantDeleted returns when the set's tenant was deleted (unix seconds;
// its tokens issued at or before are invalid), 0 if it was not.
func (s *Set) TenantDeleted() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.tenantCutoff
}

// FamilyRevoked reports whether the refresh-token family is revoked.
func (s *Set) FamilyRevoked(id string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.families[id]
}

// Sequence is the stream sequence of the last event reflected.
func (s *Set) Sequence() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.seq
}

// stream returns the identity of the stream the sequence belongs to.
func (s *Set) streamID() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.stream
}

func (s *Set) setStreamID(id int64) {
	s.mu.Lock()
	s.stream = id
	s.mu.Unlock()
}

// Len is the number of revoked tokens held.
func (s *Set) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.tokens)
}

// flip applies a state change of a client or user carrying Raft index
// idx, unless a newer change (or the resync baseline) already covers it.
// Events without an index (older publishers) apply in stream order.
func (s *Set) flip(m map[string]toggle, key string, on bool, idx uint64) {
	if key == "" {
		return
	}
	if idx != 0 && (idx <= s.floor || idx <= m[key].index) {
		return
	}
	m[key] = toggle{on: on, index: max(idx, m[key].index)}
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
			s.tokens[d.JTI] = max(d.ExpiresAt, s.tokens[d.JTI])
		}
	case EventClientDisabled:
		s.flip(s.clients, d.ClientID, true, d.RaftIndex)
	case EventClientEnabled:
		s.flip(s.clients, d.ClientID, false, d.RaftIndex)
	case EventUserLocked:
		s.flip(s.subjects, d.Subject, true, d.RaftIndex)
	case EventUserUnlocked:
		s.flip(s.subjects, d.Subject, false, d.RaftIndex)
		if d.Subject != "" && d.TokensIssuedUntil > s.cutoffs[d.Subject] {
			s.cutoffs[d.Subject] = d.TokensIssuedUntil
		}
	case EventClientDeleted:
		// Deleted for good: the disabled flag goes (a client created
		// later with the same id starts enabled, as the server's state
		// says), the cutoff keeps every token issued before invalid.
		s.flip(s.clients, d.ClientID, false, d.RaftIndex)
		if d.ClientID != "" && d.TokensIssuedUntil > s.clientCutoffs[d.ClientID] {
			s.clientCutoffs[d.ClientID] = d.TokensIssuedUntil
		}
	case EventUserDeleted:
		s.flip(s.subjects, d.Subject, false, d.RaftIndex)
		if d.Subject != "" && d.TokensIssuedUntil > s.cutoffs[d.Subject] {
			s.cutoffs[d.Subject] = d.TokensIssuedUntil
		}
	case EventTenantDeleted:
		s.tenantCutoff = max(s.tenantCutoff, d.TokensIssuedUntil)
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

// replace swaps the whole state (after a resync). Token revocations of s
// that o lacks but that still matter at keepAfter (exp at or after it) are
// kept: a revocation is never undone, and the server forgets one as soon
// as its token expires while a verifier still accepts the token for its
// leeway.
func (s *Set) replace(o *Set, keepAfter time.Time) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	cut := keepAfter.Unix()
	for jti, exp := range s.tokens {
		if _, ok := o.tokens[jti]; !ok && (exp == 0 || exp >= cut) {
			o.tokens[jti] = exp
		}
	}
	for sub, c := range s.cutoffs {
		if c > o.cutoffs[sub] {
			o.cutoffs[sub] = c // as monotonic as a revocation
		}
	}
	for id, c := range s.clientCutoffs {
		if c > o.clientCutoffs[id] {
			o.clientCutoffs[id] = c
		}
	}
	o.tenantCutoff = max(o.tenantCutoff, s.tenantCutoff)
	s.seq, s.stream, s.floor = o.seq, o.stream, o.floor
	s.tokens, s.clients, s.subjects, s.families, s.cutoffs = o.tokens, o.clients, o.subjects, o.families, o.cutoffs
	s.clientCutoffs, s.tenantCutoff = o.clientCutoffs, o.tenantCutoff
}

// prune drops revocations of tokens that expired before cut (the caller
// subtracts the largest leeway a verifier allows).
func (s *Set) prune(cut time.Time) {
	c := cut.Unix()
	s.mu.Lock()
	defer s.mu.Unlock()
	for jti, exp := range s.tokens {
		if exp != 0 && exp < c {
			delete(s.tokens, jti)
		}
	}
	for sub, until := range s.cutoffs {
		if until+int64(maxTokenLifetime/time.Second) < c {
			delete(s.cutoffs, sub)
		}
	}
	for id, until := range s.clientCutoffs {
		if until+int64(maxTokenLifetime/time.Second) < c {
			delete(s.clientCutoffs, id)
		}
	}
	if s.tenantCutoff != 0 && s.tenantCutoff+int64(maxTokenLifetime/time.Second) < c {
		s.tenantCutoff = 0
	}
}

// maxTokenLifetime bounds the lifetime of a tally access token: a lock
// older than it invalidates nothing live.
const maxTokenLifetime = time.Hour

// setFile is the saved form of a Set (PositionFile). Version 2 adds the
// stream identity, the baseline index and the index of each state change;
// a version 1 file loads with none of them (and resyncs on connect, as its
// stream cannot be told from a recreated one).
type setFile struct {
	Version  int              `json:"version"`
	Tenant   string           `json:"tenant"`
	Sequence uint64           `json:"sequence"`
	Stream   int64            `json:"stream_created_unix_nano,omitempty"`
	Floor    uint64           `json:"raft_index,omitempty"`
	Tokens   map[string]int64 `json:"tokens"`
	Clients  []string         `json:"disabled_clients,omitempty"`
	Subjects []string         `json:"locked_subjects,omitempty"`
	Families []string         `json:"revoked_families,omitempty"`
	// Changes: the Raft index of the last state change of each client
	// ("client:<id>") and user ("user:<id>").
	Changes map[string]uint64 `json:"changes,omitempty"`
	// Cutoffs: users' tokens issued at or before (unix seconds) are invalid.
	Cutoffs map[string]int64 `json:"subject_cutoffs,omitempty"`
	// ClientCutoffs: deleted clients' tokens issued at or before (unix
	// seconds) are invalid.
	ClientCutoffs map[string]int64 `json:"client_cutoffs,omitempty"`
	// TenantDeleted: the tenant was deleted; its tokens issued at or
	// before (unix seconds) are invalid.
	TenantDeleted int64 `json:"tenant_deleted_until,omitempty"`
}

func (s *Set) save(path, tenant string) error {
	s.mu.RLock()
	f := setFile{Version: 2, Tenant: tenant, Sequence: s.seq, Stream: s.stream, Floor: s.floor, Tokens: s.tokens,
		Changes: map[string]uint64{}, Cutoffs: s.cutoffs, ClientCutoffs: s.clientCutoffs, TenantDeleted: s.tenantCutoff}
	for id, t := range s.clients {
		if t.on {
			f.Clients = append(f.Clients, id)
		}
		if t.index > s.floor {
			f.Changes["client:"+id] = t.index
		}
	}
	for id, t := range s.subjects {
		if t.on {
			f.Subjects = append(f.Subjects, id)
		}
		if t.index > s.floor {
			f.Changes["user:"+id] = t.index
		}
	}
	for id := range s.families {
		f.Families = append(f.Families, id)
	}
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
	if err := json.Unmarshal(b, &f); err != nil || (f.Version != 1 && f.Version != 2) {
		return nil, fmt.Errorf("revocation: position file %s is unreadable (delete it to resync): %v", path, err)
	}
	if f.Tenant != tenant {
		return nil, fmt.Errorf("revocation: position file %s is for tenant %q", path, f.Tenant)
	}
	s := NewSet()
	s.seq, s.stream, s.floor = f.Sequence, f.Stream, f.Floor
	if f.Tokens != nil {
		s.tokens = f.Tokens
	}
	for _, c := range f.Clients {
		s.clients[c] = toggle{on: true}
	}
	for _, c := range f.Subjects {
		s.subjects[c] = toggle{on: true}
	}
	for k, idx := range f.Changes {
		switch {
		case len(k) > 7 && k[:7] == "client:":
			t := s.clients[k[7:]]
			t.index = idx
			s.clients[k[7:]] = t
		case len(k) > 5 && k[:5] == "user:":
			t := s.subjects[k[5:]]
			t.index = idx
			s.subjects[k[5:]] = t
		}
	}
	for _, c := range f.Families {
		s.families[c] = true
	}
	if f.Cutoffs != nil {
		s.cutoffs = f.Cutoffs
	}
	if f.ClientCutoffs != nil {
		s.clientCutoffs = f.ClientCutoffs
	}
	s.tenantCutoff = f.TenantDeleted
	return s, nil
}
