package dpop

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrReplayed: a proof with this jti was already seen.
var ErrReplayed = errors.New("dpop: proof jti already used")

// ErrCacheFull: the replay cache holds Capacity live entries; the proof
// cannot be recorded, so it is refused (fail closed).
var ErrCacheFull = errors.New("dpop: replay cache full")

// ReplayCache remembers the jti of each accepted proof for as long as the
// proof could still pass the iat check, and refuses a second use (RFC 9449
// §11.1). It is bounded: at most Capacity live entries, each dropped once
// it expires. It is per process — see the package users for why that is
// enough. Safe for concurrent use.
type ReplayCache struct {
	mu    sync.Mutex
	cap   int
	ttl   time.Duration
	seen  map[[16]byte]int64
	queue []entry // insertion order; expiries are non-decreasing up to clock steps
	head  int
}

type entry struct {
	key [16]byte
	exp int64
}

// NewReplayCache returns a cache of at most capacity entries, each kept
// for ttl after it is added. ttl must cover the proof's whole acceptance
// window: Window + 2×Skew.
func NewReplayCache(capacity int, ttl time.Duration) *ReplayCache {
	if capacity < 1 {
		capacity = 1
	}
	return &ReplayCache{cap: capacity, ttl: ttl, seen: make(map[[16]byte]int64)}
}

// Use records that the proof with jti (by key thumbprint jkt) was used at
// now. It returns ErrReplayed when it was used before, ErrCacheFull when
// the cache is full of live entries.
func (c *ReplayCache) Use(jkt, jti string, now time.Time) error {
	h := sha256.New()
	h.Write([]byte(jkt))
	h.Write([]byte{0})
	h.Write([]byte(jti))
	var k [16]byte
	copy(k[:], h.Sum(nil))
	n := now.UnixNano()

	c.mu.Lock()
	defer c.mu.Unlock()
	c.expire(n)
	if exp, ok := c.seen[k]; ok && exp > n {
		return ErrReplayed
	}
	if len(c.seen) >= c.cap {
		return ErrCacheFull
	}
	exp := n + int64(c.ttl)
	c.seen[k] = exp
	c.queue = append(c.queue, entry{k, exp})
	return nil
}

// expire drops expired entries from the front of the queue.
func (c *ReplayCache) expire(now int64) {
	for c.head < len(c.queue) && c.queue[c.head].exp <= now {
		e := c.queue[c.head]
		if c.seen[e.key] == e.exp {
			delete(c.seen, e.key)
		}
		c.head++
	}
	if c.head > 1024 && c.head*2 > len(c.queue) {
		c.queue = append(c.queue[:0:0], c.queue[c.head:]...)
		c.head = 0
	}
}

// Len is the number of live entries.
func (c *ReplayCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// NonceSource makes and checks server nonces (RFC 9449 §8) without state:
// a nonce is the time window it was made in and an HMAC over that window
// and a scope (the tenant). Every node holding the same secret accepts the
// nonces of every other node, so a client may be sent to any node. A nonce
// is valid in the window it was made in and the next one.
type NonceSource struct {
	key    []byte
	window time.Duration
}

// NewNonceSource returns a source keyed by secret (at least 32 bytes,
// shared by every node) with windows of the given length.
func NewNonceSource(secret []byte, window time.Duration) (*NonceSource, error) {
	if len(secret) < 32 {
		return nil, errors.New("dpop: nonce secret shorter than 32 bytes")
	}
	if window < time.Second {
		return nil, errors.New("dpop: nonce window shorter than 1s")
	}
	return &NonceSource{key: append([]byte(nil), secret...), window: window}, nil
}

func (s *NonceSource) mac(scope string, w int64) string {
	m := hmac.New(sha256.New, s.key)
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(w))
	m.Write(b[:])
	m.Write([]byte(scope))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:18])
}

// Nonce returns the nonce for scope at now.
func (s *NonceSource) Nonce(scope string, now time.Time) string {
	w := now.UnixNano() / int64(s.window)
	return strconv.FormatInt(w, 36) + "." + s.mac(scope, w)
}

// Valid reports whether nonce was made for scope in the window of now or
// the one before.
func (s *NonceSource) Valid(scope, nonce string, now time.Time) bool {
	ws, m, ok := strings.Cut(nonce, ".")
	if !ok || len(nonce) > 64 {
		return false
	}
	w, err := strconv.ParseInt(ws, 36, 64)
	cur := now.UnixNano() / int64(s.window)
	if err != nil || (w != cur && w != cur-1) || strconv.FormatInt(w, 36) != ws {
		return false
	}
	return hmac.Equal([]byte(m), []byte(s.mac(scope, w)))
}
