package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// echoServer echoes every line until the connection closes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func link(t *testing.T, target string, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ln.Close() })
	go serve(ctx, ln, target, delay, slog.New(slog.NewTextHandler(io.Discard, nil)))
	return ln.Addr().String()
}

func TestForwardsBothWaysWithDelay(t *testing.T) {
	for _, delay := range []time.Duration{0, 30 * time.Millisecond} {
		c, err := net.Dial("tcp", link(t, echoServer(t), delay))
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		start := time.Now()
		for _, msg := range []string{"one\n", "two\n", "three\n"} {
			if _, err := io.WriteString(c, msg); err != nil {
				t.Fatal(err)
			}
		}
		for _, want := range []string{"one\n", "two\n", "three\n"} {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := r.ReadString('\n')
			if err != nil || got != want {
				t.Fatalf("delay %v: read %q (%v), want %q", delay, got, err, want)
			}
		}
		// Two one-way delays at least (there and back); pipelined, not
		// one per message.
		if took := time.Since(start); took < 2*delay {
			t.Fatalf("delay %v: round trip took %v", delay, took)
		}
		c.Close()
	}
}

// A target that is down closes the caller's connection, as a broken link.
func TestClosesWhenTargetIsDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	c, err := net.Dial("tcp", link(t, dead, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read from a link to a dead target: %v, want EOF", err)
	}
}
