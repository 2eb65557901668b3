export { migrateDedicatedHost, type MigrateDedicatedHostInput, type CarriedState } from './migrate-dedicated-host';
export * from './messages';
