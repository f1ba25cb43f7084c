package revocation

import (
	"fmt"
	"testing"
)

func TestJTISeenKeepsTheLastN(t *testing.T) {
	s := newJTISeen(3)
	for i := range 5 {
		if !s.add(fmt.Sprint(i)) {
			t.Fatalf("jti %d reported as seen before it was added", i)
		}
	}
	if s.add("4") {
		t.Fatal("a jti added again reported as new")
	}
	for i, want := range []bool{false, false, true, true, true} {
		if got := s.has(fmt.Sprint(i)); got != want {
			t.Errorf("has(%d) = %v, want %v (the last 3 are kept)", i, got, want)
		}
	}
}

func TestUnverifiedJTI(t *testing.T) {
	// {"alg":"none"} . {"jti":"tally-7-0","aud":["a","b"]} . (no signature)
	raw := "eyJhbGciOiJub25lIn0.eyJqdGkiOiJ0YWxseS03LTAiLCJhdWQiOlsiYSIsImIiXX0."
	if got := unverifiedJTI([]byte(raw)); got != "tally-7-0" {
		t.Errorf("unverifiedJTI = %q, want tally-7-0", got)
	}
	for _, bad := range []string{"", "not a jwt", "a.b.c", "eyJhbGciOiJub25lIn0.bm90IGpzb24."} {
		if got := unverifiedJTI([]byte(bad)); got != "" {
			t.Errorf("unverifiedJTI(%q) = %q, want empty", bad, got)
		}
	}
}
