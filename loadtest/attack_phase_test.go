package loadtest

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// TestPhaseContext: a phase never ends before its duration; without
// extend it ends then; with extend it ends once its condition holds (not
// before the duration), and at the latest at duration+extend when the
// condition never comes. Only floors are asserted, no speeds.
func TestPhaseContext(t *testing.T) {
	const d = 50 * time.Millisecond
	t.Run("fixed", func(t *testing.T) {
		t0 := time.Now()
		ctx, cancel := phaseContext(context.Background(), d, 0, func() bool { return true })
		defer cancel()
		<-ctx.Done()
		if el := time.Since(t0); el < d || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("after %v: %v", el, ctx.Err())
		}
	})
	t.Run("condition", func(t *testing.T) {
		var ok atomic.Bool
		t0 := time.Now()
		ctx, cancel := phaseContext(context.Background(), d, time.Minute, ok.Load)
		defer cancel()
		time.Sleep(2 * d)
		if ctx.Err() != nil {
			t.Fatalf("ended before its condition: %v", ctx.Err())
		}
		ok.Store(true)
		<-ctx.Done()
		if el := time.Since(t0); el < 2*d || !errors.Is(ctx.Err(), context.Canceled) {
			t.Fatalf("after %v: %v", el, ctx.Err())
		}
	})
	t.Run("early condition waits for the duration", func(t *testing.T) {
		t0 := time.Now()
		ctx, cancel := phaseContext(context.Background(), d, time.Minute, func() bool { return true })
		defer cancel()
		<-ctx.Done()
		if el := time.Since(t0); el < d {
			t.Fatalf("ended after %v, before its duration", el)
		}
	})
	t.Run("cap", func(t *testing.T) {
		t0 := time.Now()
		ctx, cancel := phaseContext(context.Background(), d, d, func() bool { return false })
		defer cancel()
		<-ctx.Done()
		if el := time.Since(t0); el < 2*d || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("after %v: %v", el, ctx.Err())
		}
	})
}
