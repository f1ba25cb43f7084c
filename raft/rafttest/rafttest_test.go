package rafttest

import (
	"strings"
	"testing"
)

func TestCheckEffects(t *testing.T) {
	type rec struct {
		node  string
		index uint64
		rid   string
		took  bool
	}
	for _, tc := range []struct {
		name string
		recs []rec
		want string // substring of the error; "" for none
	}{
		{"clean", []rec{
			{"a", 1, "r1", true}, {"b", 1, "r1", true},
			{"a", 2, "r1", false}, {"b", 2, "r1", false}, // a retried duplicate, answered from memory
			{"a", 3, "", true}, {"b", 3, "", true},
		}, ""},
		{"applied twice", []rec{{"a", 1, "r1", true}, {"a", 2, "r1", true}}, `"r1" took effect 2 times on a`},
		{"diverging logs", []rec{{"a", 1, "r1", true}, {"b", 1, "r2", true}}, `index 1 holds request id "r1" on a and "r2" on b`},
		{"different indices", []rec{{"a", 1, "r1", true}, {"b", 2, "r1", true}}, `"r1" took effect at index 1 on a and 2 on b`},
		{"restart re-observes the same entry", []rec{{"a", 1, "r1", true}, {"a", 1, "r1", true}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newEffectLog()
			for _, r := range tc.recs {
				l.record(r.node, r.index, r.rid, r.took)
			}
			err := l.check()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected violation: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
