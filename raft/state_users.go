package raft

import (
	"cmp"
	"slices"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// flowView is the part of a tenant's read view that the end-user flows read
// locally: users (by id and by username), remembered consents and pending
// device codes (by user code). Refresh families and used codes are read
// only inside the FSM, by the commands that compare-and-swap them.
type flowView struct {
	users     map[string]*raftpb.User
	usernames map[string]string // normalized username → id
	consents  map[string]*raftpb.Consent
	devices   map[string]*raftpb.DeviceCode // device code hash → record
	userCodes map[string]string             // user code → device code hash
}

func newFlowView() flowView {
	return flowView{
		users:     make(map[string]*raftpb.User),
		usernames: make(map[string]string),
		consents:  make(map[string]*raftpb.Consent),
		devices:   make(map[string]*raftpb.DeviceCode),
		userCodes: make(map[string]string),
	}
}

// applyFlowChange publishes one change of an end-user kind; false for other
// kinds.
func (tv *tenantView) applyFlowChange(c change) bool {
	fv := &tv.flow
	switch c.kind {
	case kindUsers:
		if c.msg == nil {
			if u := fv.users[c.id]; u != nil {
				delete(fv.usernames, normalizeUsername(u.Username))
			}
			delete(fv.users, c.id)
		} else {
			u := c.msg.(*raftpb.User)
			fv.users[c.id] = u
			fv.usernames[normalizeUsername(u.Username)] = u.Id
		}
	case kindConsents:
		if c.msg == nil {
			delete(fv.consents, c.id)
		} else {
			fv.consents[c.id] = c.msg.(*raftpb.Consent)
		}
	case kindDeviceCodes:
		if c.msg == nil {
			if d := fv.devices[c.id]; d != nil && fv.userCodes[d.UserCode] == c.id {
				delete(fv.userCodes, d.UserCode)
			}
			delete(fv.devices, c.id)
		} else {
			d := c.msg.(*raftpb.DeviceCode)
			fv.devices[c.id] = d
			fv.userCodes[d.UserCode] = c.id
		}
	default:
		return false
	}
	return true
}

// loadFlowRecords reads a tenant's end-user records into tv; buckets that
// were never created hold nothing.
func loadFlowRecords(tx *bbolt.Tx, tenant string, tv *tenantView) error {
	load := func(kind string, fn func(k, v []byte) error) error {
		b := tx.Bucket(tenantBucket(tenant, kind))
		if b == nil {
			return nil
		}
		return b.ForEach(fn)
	}
	if err := load(kindUsers, func(k, v []byte) error {
		u := new(raftpb.User)
		if err := proto.Unmarshal(v, u); err != nil {
			return err
		}
		tv.applyFlowChange(change{kind: kindUsers, tenant: tenant, id: string(k), msg: u})
		return nil
	}); err != nil {
		return err
	}
	if err := load(kindConsents, func(k, v []byte) error {
		c := new(raftpb.Consent)
		if err := proto.Unmarshal(v, c); err != nil {
			return err
		}
		tv.applyFlowChange(change{kind: kindConsents, tenant: tenant, id: string(k), msg: c})
		return nil
	}); err != nil {
		return err
	}
	return load(kindDeviceCodes, func(k, v []byte) error {
		d := new(raftpb.DeviceCode)
		if err := proto.Unmarshal(v, d); err != nil {
			return err
		}
		tv.applyFlowChange(change{kind: kindDeviceCodes, tenant: tenant, id: string(k), msg: d})
		return nil
	})
}

// User returns the user id of tenant.
func (s *State) User(tenant, id string) (*raftpb.User, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if tv := s.tenants[tenant]; tv != nil {
		u, ok := tv.flow.users[id]
		return u, ok
	}
	return nil, false
}

// UserByUsername returns the user of tenant with this username, compared
// case-insensitively.
func (s *State) UserByUsername(tenant, username string) (*raftpb.User, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if tv := s.tenants[tenant]; tv != nil {
		if id, ok := tv.flow.usernames[normalizeUsername(username)]; ok {
			u, ok := tv.flow.users[id]
			return u, ok
		}
	}
	return nil, false
}

// Users returns the users of tenant, sorted by username.
func (s *State) Users(tenant string) []*raftpb.User {
	s.mu.RLock()
	var out []*raftpb.User
	if tv := s.tenants[tenant]; tv != nil {
		out = make([]*raftpb.User, 0, len(tv.flow.users))
		for _, u := range tv.flow.users {
			out = append(out, u)
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *raftpb.User) int { return cmp.Compare(a.Username, b.Username) })
	return out
}

// Consent returns the consent a user gave a client.
func (s *State) Consent(tenant, userID, clientID string) (*raftpb.Consent, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if tv := s.tenants[tenant]; tv != nil {
		c, ok := tv.flow.consents[consentKey(userID, clientID)]
		return c, ok
	}
	return nil, false
}

// UserConsents returns the consents a user gave, by client id.
func (s *State) UserConsents(tenant, userID string) []*raftpb.Consent {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*raftpb.Consent
	if tv := s.tenants[tenant]; tv != nil {
		for _, c := range tv.flow.consents {
			if c.UserId == userID {
				out = append(out, c)
			}
		}
	}
	slices.SortFunc(out, func(a, b *raftpb.Consent) int { return cmp.Compare(a.ClientId, b.ClientId) })
	return out
}

// DeviceCodeByUserCode returns the device code record with this normalized
// user code.
func (s *State) DeviceCodeByUserCode(tenant, userCode string) (*raftpb.DeviceCode, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if tv := s.tenants[tenant]; tv != nil {
		if h, ok := tv.flow.userCodes[userCode]; ok {
			d, ok := tv.flow.devices[h]
			return d, ok
		}
	}
	return nil, false
}

// DeviceCodeByHash returns the device code record with this device code
// hash (SHA-256 of the device code).
func (s *State) DeviceCodeByHash(tenant string, hash []byte) (*raftpb.DeviceCode, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if tv := s.tenants[tenant]; tv != nil {
		d, ok := tv.flow.devices[string(hash)]
		return d, ok
	}
	return nil, false
}
