// Reads one Parquet file with hyparquet (a pure-JavaScript reader that is
// strict about the footer) and prints each row as a JSON array of strings:
// "NULL" for null, decimals exactly (from their unscaled integers),
// timestamps as microseconds since the epoch. Usage: node read.mjs FILE
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'

const file = await asyncBufferFromFile(process.argv[2])
const metadata = await parquetMetadataAsync(file)
if (metadata.schema[0].repetition_type && metadata.schema[0].repetition_type !== 'REQUIRED') {
  throw new Error(`root schema element is ${metadata.schema[0].repetition_type}; the spec allows none or REQUIRED`)
}

// hyparquet turns DECIMAL into a JavaScript number, which is inexact: read
// the unscaled integer instead and place the point here.
const scales = {}
for (const el of metadata.schema.slice(1)) {
  if (el.converted_type === 'DECIMAL' || el.logical_type?.type === 'DECIMAL') {
    scales[el.name] = el.scale ?? el.logical_type?.scale ?? 0
    delete el.converted_type
    delete el.logical_type
  }
}

function decimal(unscaled, scale) {
  let v = BigInt(unscaled)
  const neg = v < 0n
  if (neg) v = -v
  let s = v.toString().padStart(scale + 1, '0')
  if (scale > 0) s = s.slice(0, s.length - scale) + '.' + s.slice(s.length - scale)
  return (neg ? '-' : '') + s
}

const rows = await parquetReadObjects({
  file,
  metadata,
  compressors,
  parsers: { timestampFromMicroseconds: us => us.toString() },
})
const names = metadata.schema.slice(1).map(el => el.name)
const out = []
for (const row of rows) {
  out.push(JSON.stringify(names.map(n => {
    const v = row[n]
    if (v === null || v === undefined) return 'NULL'
    if (n in scales) return decimal(v, scales[n])
    return String(v)
  })))
}
process.stdout.write(JSON.stringify({ columns: names, rows: metadata.num_rows.toString() }) + '\n')
if (out.length) process.stdout.write(out.join('\n') + '\n')
