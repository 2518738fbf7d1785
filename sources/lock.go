package sources

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Lock is a session-level advisory lock held on one dedicated connection
// for as long as the lock is held. If that connection dies, PostgreSQL
// drops the lock; Lost tells whether that happened.
type Lock struct {
	conn *pgxpool.Conn
	key  string
}

// TryLock takes the advisory lock named key without waiting. ok is false
// when another session holds it. The lock key is the 64-bit hash of
// "sellersnap:" + key (hashtextextended). The lock statements are sent
// without a prepare (QueryExecModeExec): one round trip each instead of
// two, on every export's critical path.
func (p *Postgres) TryLock(ctx context.Context, key string) (*Lock, bool, error) {
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("acquire lock connection: %w", err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, pgx.QueryExecModeExec, "sellersnap:"+key).Scan(&ok); err != nil {
		conn.Release()
		return nil, false, fmt.Errorf("try lock %s: %w", key, err)
	}
	if !ok {
		conn.Release()
		return nil, false, nil
	}
	// A session lock only protects anything if later statements run in the
	// same server session. Behind PgBouncer in transaction pooling mode
	// they may not: check, in a statement of its own, that this session
	// holds the lock.
	var held bool
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
		AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0))`, pgx.QueryExecModeExec, "sellersnap:"+key).Scan(&held)
	if err != nil || !held {
		conn.Hijack().Close(context.WithoutCancel(ctx))
		if err != nil {
			return nil, false, fmt.Errorf("check lock %s: %w", key, err)
		}
		return nil, false, ErrLockNotHeld
	}
	return &Lock{conn: conn, key: key}, true, nil
}

// ErrLockNotHeld means an advisory lock just taken is not held by the
// session that took it: statements are being spread over server sessions,
// as PgBouncer does in transaction pooling mode, and advisory locks cannot
// keep replicas apart. Connect directly, or with session pooling.
var ErrLockNotHeld = errors.New("advisory lock is not held by this session: is the connection going through PgBouncer in transaction pooling mode? sellersnap needs session-level locks (connect directly or use session pooling)")

// Unlock releases the lock and returns its connection to the pool.
func (l *Lock) Unlock() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := l.conn.Exec(ctx, `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, pgx.QueryExecModeExec, "sellersnap:"+l.key); err != nil {
		// The session is gone or unusable: its locks went with it. Do
		// not put the connection back.
		l.conn.Hijack().Close(ctx)
		return
	}
	l.conn.Release()
}
