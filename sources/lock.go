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
// drops the lock; Held tells whether that happened.
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
	held, err := holds(ctx, conn, key)
	if err != nil || !held {
		conn.Hijack().Close(context.WithoutCancel(ctx))
		if err != nil {
			return nil, false, fmt.Errorf("check lock %s: %w", key, err)
		}
		return nil, false, ErrLockNotHeld
	}
	return &Lock{conn: conn, key: key}, true, nil
}

// holds reports whether conn's session holds the advisory lock of key.
func holds(ctx context.Context, conn *pgxpool.Conn, key string) (bool, error) {
	var held bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
		AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0))`, pgx.QueryExecModeExec, "sellersnap:"+key).Scan(&held)
	return held, err
}

// ErrLockLost means a lock taken earlier is no longer held: its session
// ended (a lost connection, pg_terminate_backend, a server restart), and
// another process may have taken it since.
var ErrLockLost = errors.New("advisory lock lost: its database session ended, so another process may be exporting the same unit")

// Held returns nil if the lock is still held by its session, else an error
// wrapping ErrLockLost. An export asks before every change it makes to the
// bucket, so an exporter that lost its lock stops instead of overwriting
// what the new holder publishes.
func (l *Lock) Held(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	held, err := holds(ctx, l.conn, l.key)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("lock %s: not checked: %w", l.key, context.Cause(ctx))
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w (%v)", l.key, ErrLockLost, err)
	}
	if !held {
		return fmt.Errorf("lock %s: %w", l.key, ErrLockLost)
	}
	return nil
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

// SnapshotLock is a transaction-level advisory lock taken inside a
// snapshot: held until the snapshot closes, on the snapshot's own
// connection. An export under it needs one connection instead of two, and
// it works through PgBouncer in transaction pooling mode (the transaction
// keeps its server connection).
type SnapshotLock struct {
	pool *pgxpool.Pool
	pid  uint32
	key  string
}

// TryLock takes the advisory lock named key (named as Postgres.TryLock
// names it: the two kinds exclude each other) for the rest of the
// snapshot's transaction, without waiting. ok is false when another
// session or transaction holds it.
func (s *Snapshot) TryLock(ctx context.Context, key string) (*SnapshotLock, bool, error) {
	ctx, cancel := bound(ctx, s.cfg)
	defer cancel()
	var ok bool
	var pid uint32
	err := s.tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0)), pg_backend_pid()`, pgx.QueryExecModeExec, "sellersnap:"+key).Scan(&ok, &pid)
	if err != nil {
		return nil, false, fmt.Errorf("try lock %s: %w", key, stalled(ctx, err))
	}
	if !ok {
		return nil, false, nil
	}
	return &SnapshotLock{pool: s.pool, pid: pid, key: key}, true, nil
}

// Held returns nil if the snapshot's server session still holds the lock,
// else an error wrapping ErrLockLost. It asks pg_locks on another
// connection of the pool, so it can be asked while the snapshot's own
// connection streams rows (split output commits parts mid-stream).
func (l *SnapshotLock) Held(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var held bool
	err := l.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = $2 AND granted
		AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0))`, pgx.QueryExecModeExec, "sellersnap:"+l.key, l.pid).Scan(&held)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("lock %s: not checked: %w", l.key, context.Cause(ctx))
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w (%v)", l.key, ErrLockLost, err)
	}
	if !held {
		return fmt.Errorf("lock %s: %w", l.key, ErrLockLost)
	}
	return nil
}
