package revocation

import (
	"context"

	"github.com/nats-io/nats.go"
)

// followLive subscribes to the tenant's live subjects (NATSLiveSubjects)
// on the watcher's NATS connection while it follows the stream. A live
// event is verified like any other (signature with the issuer's keys, iss,
// aud, tenant) and applied to the set at once, without moving the set's
// stream sequence and without OnEvent hooks: the stream delivers the same
// event again, in order, and that is when the hooks run and the position
// moves. So a revocation reaches the set within milliseconds even while
// the stream elects a new leader, and the stream stays the one log that
// replays. An event that does not verify here is left to the stream path,
// which retries or reports it.
func (w *Watcher) followLive(ctx context.Context) (stop func(), err error) {
	sub, err := w.cfg.NATS.Subscribe(NATSLiveSubjects(w.cfg.Tenant), func(m *nats.Msg) {
		c, err := w.verifySET(ctx, string(m.Data))
		if err != nil {
			return
		}
		typ, d, err := c.Event()
		if err != nil || d.Tenant != w.cfg.Tenant {
			return
		}
		w.set.apply(0, typ, d)
	})
	if err != nil {
		return nil, err
	}
	return func() { sub.Unsubscribe() }, nil
}
