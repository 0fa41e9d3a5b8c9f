// Times in the viewer's zone, with UTC on hover (audit logs are compared
// across zones).
export function When({ at }: { at?: string | null }) {
  if (!at) return <span class="muted">never</span>;
  const d = new Date(at);
  if (isNaN(d.getTime())) return <span>{at}</span>;
  return (
    <time dateTime={at} title={d.toISOString().replace('.000Z', 'Z') + ' (UTC)'}>
      {d.toLocaleString()}
    </time>
  );
}
