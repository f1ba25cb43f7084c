package node

import "time"

// SetKeyPolicyTimingForTest shortens how often the leader checks key
// policies and the smallest rotate-every; it returns the restore function.
func SetKeyPolicyTimingForTest(every, minRotate time.Duration) func() {
	oldEvery, oldMin := keyPolicyEvery, minKeyRotateEvery
	keyPolicyEvery, minKeyRotateEvery = every, minRotate
	return func() { keyPolicyEvery, minKeyRotateEvery = oldEvery, oldMin }
}
