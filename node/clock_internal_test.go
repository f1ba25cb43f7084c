package node

import (
	"testing"
	"time"
)

func TestMedianOf(t *testing.T) {
	for _, tc := range []struct {
		in   []time.Duration
		want time.Duration
	}{
		{[]time.Duration{0}, 0},
		{[]time.Duration{0, -time.Hour, -time.Hour + time.Millisecond}, -time.Hour + time.Millisecond},
		{[]time.Duration{time.Hour, 0, 10 * time.Millisecond}, 10 * time.Millisecond},
		{[]time.Duration{0, time.Hour}, 30 * time.Minute},
	} {
		if got := medianOf(tc.in); got != tc.want {
			t.Errorf("medianOf(%v) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
