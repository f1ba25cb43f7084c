package rafttest

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// effectLog records, per node, what every applied command entry was and
// where each request id took effect, to check after a test that no request
// id was applied twice and that all replicas applied the same log.
type effectLog struct {
	mu    sync.Mutex
	nodes map[string]*nodeEffects
}

// nodeEffects is what one node (by Raft id, across restarts) applied.
type nodeEffects struct {
	// at maps a log index to the request id of the command applied there
	// ("" for a command without one).
	at map[uint64]string
	// took maps a request id to the distinct indices where it took effect
	// (its Result.Index was its own index, not an earlier one's).
	took map[string][]uint64
}

func newEffectLog() *effectLog {
	return &effectLog{nodes: make(map[string]*nodeEffects)}
}

// observe records the entries fsm applies from now on under node id.
func (l *effectLog) observe(id string, fsm *raft.FSM) {
	fsm.OnApplied(func(index uint64, cmd *raftpb.Command, res raft.Result) {
		l.record(id, index, cmd.GetRequestId(), res.Index == index)
	})
}

func (l *effectLog) record(id string, index uint64, rid string, tookEffect bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ne := l.nodes[id]
	if ne == nil {
		ne = &nodeEffects{at: make(map[uint64]string), took: make(map[string][]uint64)}
		l.nodes[id] = ne
	}
	ne.at[index] = rid
	if rid != "" && tookEffect && !slices.Contains(ne.took[rid], index) {
		ne.took[rid] = append(ne.took[rid], index)
	}
}

func (l *effectLog) effective(id, rid string) (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ne := l.nodes[id]; ne != nil && len(ne.took[rid]) > 0 {
		return ne.took[rid][0], true
	}
	return 0, false
}

// check reports every violation: a request id that took effect at two
// indices on one node, two nodes that applied different request ids at one
// index, and a request id that took effect at different indices on two
// nodes.
func (l *effectLog) check() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return checkEffects(l.nodes)
}

func checkEffects(nodes map[string]*nodeEffects) error {
	ids := make([]string, 0, len(nodes))
	for id := range nodes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var errs []error
	const maxReported = 10
	report := func(format string, args ...any) {
		if len(errs) < maxReported {
			errs = append(errs, fmt.Errorf("rafttest: invariant: "+format, args...))
		}
	}
	firstAt := make(map[uint64]string)   // index -> node id that first saw it
	firstTook := make(map[string]string) // rid -> node id that first saw it take effect
	for _, id := range ids {
		ne := nodes[id]
		for _, rid := range sortedKeys(ne.took) {
			idx := ne.took[rid]
			if len(idx) > 1 {
				report("request id %q took effect %d times on %s, at indices %v", rid, len(idx), id, idx)
			}
			if other, ok := firstTook[rid]; ok {
				if o := nodes[other].took[rid]; o[0] != idx[0] {
					report("request id %q took effect at index %d on %s and %d on %s", rid, o[0], other, idx[0], id)
				}
			} else {
				firstTook[rid] = id
			}
		}
		for _, index := range sortedKeys(ne.at) {
			if other, ok := firstAt[index]; ok {
				if a, b := nodes[other].at[index], ne.at[index]; a != b {
					report("index %d holds request id %q on %s and %q on %s", index, a, other, b, id)
				}
			} else {
				firstAt[index] = id
			}
		}
	}
	return errors.Join(errs...)
}

func sortedKeys[K string | uint64, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
