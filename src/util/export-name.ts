// Export names may carry a grant secret after their last '/' (csi/exports.ts makes them so);
// everything that logs or reports a name goes through here.

/** The name with the part after its last '/' replaced by an ellipsis. */
export function redactExportName(exportName: string): string {
  const cut = exportName.lastIndexOf('/');
  return cut > 0 ? `${exportName.slice(0, cut)}/…` : exportName;
}
