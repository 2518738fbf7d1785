package pipeline

import (
	"fmt"
)

// RowMismatch is a published export of a run whose row count differs from
// what the database holds for it now: sellers added to (or removed from)
// the run after it was exported, a breach of the source contract (a run's
// sellers are committed before it is marked completed; README "Source
// contract"). sellersnap never rewrites published files on its own: a
// rerun of the run repairs it.
type RowMismatch struct {
	Job, RunID, OrgID string
	Manifest          string
	Published, Now    int64
}

func (m RowMismatch) String() string {
	return fmt.Sprintf("job %s, run %s (org %s): the manifest says %d rows, the database has %d now", m.Job, m.RunID, m.OrgID, m.Published, m.Now)
}
