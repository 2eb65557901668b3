// The bundle the test suite's workers run: the product's workflows plus a few test-only ones.
export * from '../../workflows';
export * from './probe-workflow';
